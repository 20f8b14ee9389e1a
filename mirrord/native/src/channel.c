/* The relay's link to the intproxy: a pool of unix connections, one per request in
 * flight (so a slow connect in one thread does not hold another's name lookup), each
 * opened with the Hello handshake and kept for the next request. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "real.h"
#include "relay.h"

/* longer than the agent's own connect timeout, so its answer arrives first */
#define REQUEST_TIMEOUT_S 45
#define POOL_MAX 4 /* idle links kept, as the Python layer keeps them */
/* and more when their last request was a connect: the intproxy's relay for it lives with
 * the link that asked, so closing the link right away would reset the connection */
#define POOL_STICKY 32
#define MAX_FDS 16

struct channel {
    int fd;
    atomic_int lost; /* the app closed our descriptor: the number is not ours any more */
    int hello_pending;
    int keep;   /* owns a subscription: open while the process lives */
    int sticky; /* its last request was a connect */
    uint8_t *buf;
    size_t len, cap;
    int fds[MAX_FDS];
    int nfds;
    struct channel *next; /* every channel of this process, for fork() */
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct channel *idle[POOL_STICKY];
static int nidle;
static struct channel *everyone;
static atomic_llong next_req = 1;
static atomic_int warned;

int64_t chan_next_req(void) { return atomic_fetch_add(&next_req, 1); }

/* why the last link failed, for the one line the process prints */
static __thread char failure[320];

static void failed(const char *fmt, const char *detail) {
    snprintf(failure, sizeof failure, fmt, detail);
}

/* Once per process: later failures have the same cause, and the app its errno. */
static void unavailable(const char *what, int err) {
    if (!failure[0])
        snprintf(failure, sizeof failure, "cannot reach the intproxy (%s: %s)", what,
                 strerror(err));
    if (!atomic_exchange(&warned, 1))
        relay_log("%s: intercepted calls fail", failure);
    failure[0] = 0;
}

/* A failure of mirrord itself (the intproxy lost the agent...), not the target's answer
 * (a refused connection): the app only gets an errno, so the first one is told once. */
static atomic_int told;
static void mirrord_failure(const char *message) {
    if (strncmp(message, "mirrord: ", 9) == 0 && !atomic_exchange(&told, 1))
        relay_log("%s", message + 9);
}

/* Close a channel's descriptor (unless the app took the number) and free it;
 * `single_threaded`: in a fork child, where no other thread can hold a lock. */
static void release(struct channel *c, int single_threaded) {
    if (!single_threaded)
        pthread_mutex_lock(&fd_lock);
    struct fdstate *st = fd_get(c->fd);
    int ours = !atomic_load(&c->lost) && (!st || st->channel == c);
    if (st && st->channel == c)
        st->channel = NULL; /* (freed with the descriptor's state below) */
    if (!single_threaded)
        pthread_mutex_unlock(&fd_lock);
    if (ours) {
        fd_forget(c->fd);
        real_close(c->fd);
    }
    for (int i = 0; i < c->nfds; i++)
        real_close(c->fds[i]);
    free(c->buf);
    free(c);
}

static void destroy(struct channel *c) {
    pthread_mutex_lock(&pool_lock);
    for (struct channel **at = &everyone; *at; at = &(*at)->next)
        if (*at == c) {
            *at = c->next;
            break;
        }
    pthread_mutex_unlock(&pool_lock);
    release(c, 0);
}

void chan_lost_fd(struct channel *c) { atomic_store(&c->lost, 1); }

static int send_all(struct channel *c, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static struct channel *open_channel(void) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(relay_socket_path) >= sizeof addr.sun_path) {
        unavailable(relay_socket_path, ENAMETOOLONG);
        return NULL;
    }
    strcpy(addr.sun_path, relay_socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        unavailable("socket", errno);
        return NULL;
    }
    struct timeval tv = {.tv_sec = REQUEST_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc;
    do
        rc = real_connect(fd, (struct sockaddr *)&addr, sizeof addr);
    while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        unavailable(relay_socket_path, errno);
        real_close(fd);
        return NULL;
    }
    struct channel *c = calloc(1, sizeof *c);
    if (!c) {
        real_close(fd);
        return NULL;
    }
    c->fd = fd;
    /* the Hello goes now; its answer is read before the first reply (no round trip) */
    uint8_t buf[256];
    char client[64];
    struct mpw w;
    snprintf(client, sizeof client, "relay pid %d", (int)getpid());
    mpw_init(&w, buf, sizeof buf);
    frame_hello(&w, relay_token, client);
    if (w.failed || send_all(c, w.buf, w.len)) {
        mpw_free(&w);
        unavailable("hello", errno ? errno : EIO);
        real_close(fd);
        free(c);
        return NULL;
    }
    mpw_free(&w);
    c->hello_pending = 1;
    pthread_mutex_lock(&fd_lock);
    struct fdstate *st = fd_ensure(fd);
    if (st)
        st->channel = c;
    pthread_mutex_unlock(&fd_lock);
    pthread_mutex_lock(&pool_lock);
    c->next = everyone;
    everyone = c;
    pthread_mutex_unlock(&pool_lock);
    return c;
}

static struct channel *take(void) {
    struct channel *c = NULL;
    pthread_mutex_lock(&pool_lock);
    while (nidle && !c) {
        c = idle[--nidle];
        if (atomic_load(&c->lost)) {
            pthread_mutex_unlock(&pool_lock);
            destroy(c);
            pthread_mutex_lock(&pool_lock);
            c = NULL;
        }
    }
    pthread_mutex_unlock(&pool_lock);
    return c ? c : open_channel();
}

static void give_back(struct channel *c) {
    pthread_mutex_lock(&pool_lock);
    if (!atomic_load(&c->lost) && (nidle < POOL_MAX || (c->sticky && nidle < POOL_STICKY))) {
        idle[nidle++] = c;
        c = NULL;
    } else if (!atomic_load(&c->lost) && c->keep) {
        c = NULL; /* it owns a subscription: stays open, outside the pool */
    }
    pthread_mutex_unlock(&pool_lock);
    if (c)
        destroy(c);
}

/* Read until one whole frame is buffered; descriptors that come along are queued. */
static int receive(struct channel *c, struct reply *out) {
    for (;;) {
        if (c->len >= 4) {
            uint32_t n = (uint32_t)c->buf[0] << 24 | (uint32_t)c->buf[1] << 16 |
                         (uint32_t)c->buf[2] << 8 | c->buf[3];
            if (n > MAX_FRAME) {
                failed("the intproxy sent a frame over the limit%s", "");
                return -1;
            }
            if (c->len >= 4 + (size_t)n) {
                char why[128];
                int rc = reply_decode(c->buf + 4, n, out, why, sizeof why);
                memmove(c->buf, c->buf + 4 + n, c->len - 4 - n);
                c->len -= 4 + n;
                if (rc)
                    failed("the intproxy broke the protocol: %s", why);
                return rc;
            }
        }
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 65536 * 2;
            uint8_t *grown = realloc(c->buf, cap);
            if (!grown)
                return -1;
            c->buf = grown;
            c->cap = cap;
        }
        union {
            char space[CMSG_SPACE(MAX_FDS * sizeof(int))];
            struct cmsghdr align;
        } control;
        struct iovec iov = {.iov_base = c->buf + c->len, .iov_len = c->cap - c->len};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = control.space,
                             .msg_controllen = sizeof control.space};
        ssize_t k = real_recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
        if (k < 0 && errno == EINTR)
            continue;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *fds = (int *)CMSG_DATA(cm);
            for (size_t i = 0; i < count; i++) {
                if (c->nfds < MAX_FDS)
                    c->fds[c->nfds++] = fds[i];
                else
                    real_close(fds[i]);
            }
        }
        if (k <= 0) {
            if (k == 0)
                failed("the intproxy closed the link%s", "");
            return -1;
        }
        c->len += (size_t)k;
    }
}

static int take_fd(struct channel *c) {
    if (!c->nfds)
        return -1;
    int fd = c->fds[0];
    memmove(c->fds, c->fds + 1, (size_t)(c->nfds - 1) * sizeof(int));
    c->nfds--;
    return fd;
}

static int finish_hello(struct channel *c) {
    struct reply hello;
    if (receive(c, &hello))
        return -1;
    int ok = hello.type == R_HELLO_OK && hello.version >= 1 && hello.version <= PROTOCOL_VERSION;
    if (!ok)
        failed("the intproxy refused the relay: %s",
               hello.type == R_ERROR ? hello.message : "no hello_ok");
    reply_free(&hello);
    c->hello_pending = 0;
    return ok ? 0 : -1;
}

int chan_request(const uint8_t *frame, size_t n, int64_t req, struct reply *out, int *fd_out,
                 int keep) {
    *fd_out = -1;
    struct channel *c = take();
    if (!c)
        return CHAN_UNAVAILABLE;
    int saved = errno;
    if (send_all(c, frame, n) || (c->hello_pending && finish_hello(c)))
        goto broken;
    for (;;) {
        if (receive(c, out))
            goto broken;
        int fd = reply_carries_fd(out) ? take_fd(c) : -1;
        if (reply_carries_fd(out) && fd < 0) {
            failed("a reply of the intproxy announced a socket that did not arrive%s", "");
            reply_free(out);
            goto broken;
        }
        if (out->req == req) {
            if (out->type == R_FAILED)
                mirrord_failure(out->message);
            *fd_out = fd;
            c->keep |= keep == CHAN_KEEP;
            c->sticky = keep == CHAN_STICKY;
            give_back(c);
            errno = saved;
            return CHAN_OK;
        }
        if (fd >= 0)
            real_close(fd);
        reply_free(out);
    }
broken:
    unavailable("link", errno ? errno : EIO);
    destroy(c);
    errno = saved;
    return CHAN_UNAVAILABLE;
}

int chan_notify(const uint8_t *frame, size_t n) {
    struct channel *c = take();
    if (!c)
        return CHAN_UNAVAILABLE;
    if (send_all(c, frame, n)) {
        destroy(c);
        return CHAN_UNAVAILABLE;
    }
    give_back(c);
    return CHAN_OK;
}

void chan_warm(int wait_hello) {
    struct channel *c = open_channel();
    if (!c)
        return;
    /* at start, as the Python layer does: the first request then pays no handshake */
    if (wait_hello && finish_hello(c)) {
        unavailable("hello", errno ? errno : EIO);
        destroy(c);
        return;
    }
    give_back(c);
}

void chan_fork_prepare(void) { pthread_mutex_lock(&pool_lock); }
void chan_fork_parent(void) { pthread_mutex_unlock(&pool_lock); }

void chan_after_fork_child(void) {
    /* the parent's links are copies here: using one would mix two processes' replies */
    struct channel *c = everyone;
    everyone = NULL;
    nidle = 0;
    pthread_mutex_init(&pool_lock, NULL);
    while (c) {
        struct channel *next = c->next;
        release(c, 1);
        c = next;
    }
}
