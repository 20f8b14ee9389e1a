/* Per-descriptor state: a two-level table of pointers, read without a lock on the hot
 * path (close() of a descriptor the relay never touched costs one atomic load). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "real.h"
#include "relay.h"

#define CHUNK 4096
#define CHUNKS 256 /* descriptors up to 1,048,575 are tracked */

pthread_mutex_t fd_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(struct fdstate *) *chunks[CHUNKS];

static _Atomic(struct fdstate *) *slot(int fd, int create) {
    if (fd < 0 || fd >= CHUNK * CHUNKS)
        return NULL;
    _Atomic(struct fdstate *) *chunk =
        __atomic_load_n(&chunks[fd / CHUNK], __ATOMIC_ACQUIRE);
    if (!chunk) {
        if (!create)
            return NULL;
        chunk = calloc(CHUNK, sizeof *chunk);
        if (!chunk)
            return NULL;
        __atomic_store_n(&chunks[fd / CHUNK], chunk, __ATOMIC_RELEASE);
    }
    return &chunk[fd % CHUNK];
}

int fd_tracked(int fd) {
    _Atomic(struct fdstate *) *s = slot(fd, 0);
    return s && atomic_load_explicit(s, memory_order_relaxed) != NULL;
}

struct fdstate *fd_get(int fd) {
    _Atomic(struct fdstate *) *s = slot(fd, 0);
    return s ? atomic_load(s) : NULL;
}

struct fdstate *fd_ensure(int fd) {
    _Atomic(struct fdstate *) *s = slot(fd, 1);
    if (!s)
        return NULL;
    struct fdstate *st = atomic_load(s);
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st)
            return NULL;
        st->refs = 1;
        atomic_store(s, st);
    }
    return st;
}

static struct fdstate *detach(int fd) {
    _Atomic(struct fdstate *) *s = slot(fd, 0);
    return s ? atomic_exchange(s, NULL) : NULL;
}

/* The last reference is gone: returns the listener to tell the intproxy about (0: none). */
static unsigned long long release(struct fdstate *st) {
    if (--st->refs > 0)
        return 0;
    unsigned long long closed = st->listening ? st->inode : 0;
    if (st->channel)
        chan_lost_fd(st->channel);
    free(st->pairs);
    free(st);
    return closed;
}

void fd_share(int from, int to) {
    struct fdstate *st = fd_get(from);
    _Atomic(struct fdstate *) *s = slot(to, 1);
    if (!st || !s || st->channel) /* a copy of our link is the app's business */
        return;
    st->refs++;
    struct fdstate *old = atomic_exchange(s, st);
    if (old)
        release(old); /* (callers forget `to` first; this is a safety net) */
}

void fd_forget(int fd) {
    pthread_mutex_lock(&fd_lock);
    struct fdstate *st = detach(fd);
    unsigned long long listener = st ? release(st) : 0;
    pthread_mutex_unlock(&fd_lock);
    if (listener) {
        uint8_t buf[64];
        struct mpw w;
        mpw_init(&w, buf, sizeof buf);
        frame_listener_closed(&w, (int64_t)listener);
        if (!w.failed)
            chan_notify(w.buf, w.len); /* the intproxy gone: so is the subscription */
        mpw_free(&w);
    }
}

void fd_after_fork_child(void) { pthread_mutex_init(&fd_lock, NULL); }
