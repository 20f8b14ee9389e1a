/* The native data plane of a link (agent and intproxy): a thread of its own that owns the
 * link's socket and the local sockets of relayed TCP connections, and moves their bytes
 * with no Python in the way. Everything else on the link (requests, replies, the frames
 * of connections Python runs itself) passes between the link and Python's end of a
 * socket pair, in order, unread.
 *
 *   peer <-- link socket --> [pump thread] <-- socket pair --> Python's Link and Mux
 *                                 |
 *                          local TCP sockets
 *
 * Python hands a connection over with a pump_attach command (its socket's descriptor:
 * same process). Frames of that connection may already be on their way to Python; the
 * pump answers pump_sync behind them and holds the connection's new frames until Python
 * has replayed what it got (pump_replay) and said pump_synced. Flow control is the
 * Python Mux's (mirrord/protocol/flow.py): credit per connection, windows that grow for
 * bulk transfers within a budget. A peer that breaks the protocol on a connection the
 * pump runs gets a pump_error to Python, which ends the link as its own decoder would. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pump_frames.h"

#define EXPORT __attribute__((visibility("default")))

#define READ_SIZE (256 * 1024)
#define LINK_READ_SIZE (1024 * 1024) /* a few whole Data frames a call */
#define READS_PER_EVENT 4            /* a socket that filled a read is read again at once */
#define HIGH_WATER (4u << 20) /* bytes queued for a socket above which its sources pause */
#define LOW_WATER (1u << 20)
#define MAX_FDS 64
#define GROW_WITHIN 0.05
#define CLOSE_GRACE_MS 1000 /* Python closed its end: how long what it wrote may take */
/* Bulk bytes (a read at least this big) go socket -> pipe -> socket by splice(2), which
 * moves page references instead of copying them through this thread twice. */
#define SPLICE_MIN (64 * 1024)
#define PIPE_SIZE (1024 * 1024)
/* Small Data frames in a row that end bulk reads of the link: one alone (a sender's read
 * that found little) would make the next read take whole frames, copied, not spliced. */
#define SMALL_RUN 8

enum src_kind { S_LINK, S_PY, S_CONN };

struct buf {
    uint8_t *p;
    size_t head, tail, cap;
};

struct conn {
    enum src_kind kind; /* first: epoll's data.ptr points here */
    int64_t id;
    int fd;
    uint32_t mask;  /* what epoll watches now */
    int registered; /* in the epoll set (a hung-up socket we cannot read now is not) */
    int64_t send_credit;
    int64_t window, in_flight, undelivered, round_count;
    double round_start;
    struct buf out, pending; /* bytes for the socket; frames held while syncing */
    int syncing, sent_eof, got_eof, shut_pending, peer_closed, done, closing;
    int bulk; /* its last read was big: the next one goes by splice */
    int pipe[2];  /* bytes for the socket that came by splice, ahead of `out` (-1: none yet) */
    size_t piped, pipe_size;
    struct conn *next_in_bucket, *prev_all, *next_all, *next_dead;
};

struct fd_at {
    uint64_t pos; /* the link stream's offset it must go no later than */
    int fd;
};

struct pump {
    enum src_kind link_kind, py_kind;
    int ep, link, py;
    uint32_t link_mask, py_mask;
    struct buf lin, lout, pin, pout;
    uint64_t lout_sent; /* bytes of the link stream sent so far */
    struct fd_at fdq[MAX_FDS * 4];
    int nfdq;
    int arrived[MAX_FDS]; /* descriptors from Python not yet tied to a frame */
    int narrived;
    int link_gone, py_gone, broken, congested, py_full, py_shut;
    int splice_ok, out_pipe[2]; /* conn -> link (link -> conn: each connection's own) */
    int in_bulk;     /* the link's last payload came by splice: read the next frame's head alone */
    int small_run;   /* small Data frames in a row since the last spliced one */
    int64_t in_conn; /* whose payload the link is in the middle of, */
    size_t in_left;  /* and how much of it is still to come */
    struct timespec grace_end;
    int64_t initial_window, max_window, growth_budget, grown, max_chunk;
    struct conn **buckets;
    size_t nbuckets, count;
    struct conn *all, *dead;
};

/* ---------------------------------------------------------------- buffers */

static size_t buf_len(const struct buf *b) { return b->tail - b->head; }

static uint8_t *buf_room(struct buf *b, size_t n) {
    if (b->cap - b->tail >= n)
        return b->p + b->tail;
    if (b->head) { /* slide what is left to the front first */
        memmove(b->p, b->p + b->head, buf_len(b));
        b->tail -= b->head;
        b->head = 0;
        if (b->cap - b->tail >= n)
            return b->p + b->tail;
    }
    size_t cap = b->cap ? b->cap : 64 * 1024;
    while (cap - b->tail < n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return NULL;
    b->p = p;
    b->cap = cap;
    return b->p + b->tail;
}

static int buf_put(struct buf *b, const void *data, size_t n) {
    uint8_t *at = buf_room(b, n);
    if (!at)
        return -1;
    memcpy(at, data, n);
    b->tail += n;
    return 0;
}

static void buf_take(struct buf *b, size_t n) {
    b->head += n;
    if (b->head == b->tail)
        b->head = b->tail = 0;
}

static void buf_free(struct buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Moves the `n` bytes a pipe of ours holds into `b`: they are there, so nothing waits.
 * Nonzero if memory ran out (the rest is read and dropped: the pipe is left empty). */
static int pipe_to_buf(int pipe, struct buf *b, size_t n) {
    uint8_t scratch[16 * 1024];
    int failed = 0;
    while (n) {
        uint8_t *at = failed ? NULL : buf_room(b, n);
        failed |= !at;
        ssize_t got = read(pipe, at ? at : scratch, at ? n : (n < sizeof scratch ? n : sizeof scratch));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        if (at)
            b->tail += (size_t)got;
        n -= (size_t)got;
    }
    return failed;
}

/* A pipe for splice(2), as big as we may make it: its size, or 0 (then fds may be -1). */
static size_t open_pipe(int fds[2]) {
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC)) {
        fds[0] = fds[1] = -1;
        return 0;
    }
    fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE); /* (refused beyond the system's limit) */
    int size = fcntl(fds[1], F_GETPIPE_SZ);
    return size > 0 ? (size_t)size : 0;
}

static void close_pipe(int fds[2]) {
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- connections */

static size_t bucket_of(const struct pump *p, int64_t id) {
    return (size_t)((uint64_t)id * 0x9E3779B97F4A7C15ull >> 32) & (p->nbuckets - 1);
}

static struct conn *lookup(struct pump *p, int64_t id) {
    for (struct conn *c = p->buckets[bucket_of(p, id)]; c; c = c->next_in_bucket)
        if (c->id == id)
            return c;
    return NULL;
}

static void grow_table(struct pump *p) {
    size_t n = p->nbuckets * 2;
    struct conn **b = calloc(n, sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    struct conn **old = p->buckets;
    size_t oldn = p->nbuckets;
    p->buckets = b;
    p->nbuckets = n;
    for (size_t i = 0; i < oldn; i++)
        for (struct conn *c = old[i], *next; c; c = next) {
            next = c->next_in_bucket;
            size_t at = bucket_of(p, c->id);
            c->next_in_bucket = b[at];
            b[at] = c;
        }
    free(old);
}

/* the connection's id is free again (its struct may live on to flush a graceful close) */
static void unlink_id(struct pump *p, struct conn *c) {
    struct conn **at = &p->buckets[bucket_of(p, c->id)];
    for (; *at; at = &(*at)->next_in_bucket)
        if (*at == c) {
            *at = c->next_in_bucket;
            p->count--;
            p->grown -= c->window - p->initial_window;
            return;
        }
}

static void set_mask(struct pump *p, struct conn *c, uint32_t want) {
    if (c->fd < 0)
        return;
    if (!c->registered) {
        if (!want)
            return;
        struct epoll_event ev = {.events = want, .data.ptr = c};
        if (epoll_ctl(p->ep, EPOLL_CTL_ADD, c->fd, &ev) == 0) {
            c->registered = 1;
            c->mask = want;
        }
        return;
    }
    if (want == c->mask)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    epoll_ctl(p->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->mask = want;
}

static int can_read(const struct pump *p, const struct conn *c) {
    return !c->done && !c->sent_eof && c->send_credit > 0 && !p->congested &&
           buf_len(&p->lout) <= HIGH_WATER; /* (many sockets ready in one pass) */
}

/* bytes on their way to the connection's socket: in its pipe, then in `out` */
static size_t queued(const struct conn *c) { return c->piped + buf_len(&c->out); }

static void update_conn(struct pump *p, struct conn *c) {
    uint32_t want = 0;
    if (can_read(p, c))
        want |= EPOLLIN;
    if (queued(c))
        want |= EPOLLOUT;
    set_mask(p, c, want);
}

/* the struct goes at the end of the loop's pass: events of this pass may point at it */
static void bury(struct pump *p, struct conn *c) {
    if (c->fd >= 0) {
        close(c->fd); /* (also leaves the epoll set) */
        c->fd = -1;
    }
    close_pipe(c->pipe);
    c->piped = 0;
    if (c->prev_all)
        c->prev_all->next_all = c->next_all;
    else if (p->all == c)
        p->all = c->next_all;
    if (c->next_all)
        c->next_all->prev_all = c->prev_all;
    c->prev_all = c->next_all = NULL;
    c->next_dead = p->dead;
    p->dead = c;
}

static void nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

static void linger_zero(int fd) {
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

/* ---------------------------------------------------------------- frames out */

static void gone_link(struct pump *p);

static void to_link(struct pump *p, struct mpw *w) {
    if (!w->failed && !p->link_gone)
        buf_put(&p->lout, w->buf, w->len);
    mpw_free(w);
}

static void tell_close(struct pump *p, int64_t id, int reset) {
    uint8_t first[64];
    struct mpw w;
    mpw_init(&w, first, sizeof first);
    pump_frame_close(&w, id, reset);
    to_link(p, &w);
}

static void tell_python_error(struct pump *p, const char *message) {
    uint8_t first[256];
    struct mpw w;
    mpw_init(&w, first, sizeof first);
    pump_frame_error(&w, message);
    if (!w.failed)
        buf_put(&p->pout, w.buf, w.len);
    mpw_free(&w);
    p->broken = 1; /* nothing more is read from the link: Python ends it */
}

/* the peer reset the connection, Python gave up on it, or the link is gone */
static void abort_conn(struct pump *p, struct conn *c) {
    if (!c->done)
        unlink_id(p, c);
    c->done = 1;
    if (c->fd >= 0)
        linger_zero(c->fd);
    bury(p, c);
}

/* both directions are done (or the local socket failed): the id is forgotten */
static void finish(struct pump *p, struct conn *c, int reset) {
    if (c->done)
        return;
    c->done = 1;
    unlink_id(p, c);
    if (!c->peer_closed || reset)
        tell_close(p, c->id, reset);
    if (reset || !queued(c)) {
        if (reset && c->fd >= 0)
            linger_zero(c->fd);
        bury(p, c);
    } else {
        c->closing = 1; /* what the peer sent still goes to the socket, then close */
        update_conn(p, c);
    }
}

static void maybe_finished(struct pump *p, struct conn *c) {
    if (c->sent_eof && c->got_eof && !c->done)
        finish(p, c, 0);
}

/* ReceiveCredit.delivered (mirrord/protocol/flow.py), for one connection */
static int64_t credit_to_grant(struct pump *p, struct conn *c, int64_t amount) {
    c->in_flight -= amount;
    int64_t pending = c->undelivered + amount;
    if (c->window < p->max_window) {
        int64_t count = c->round_count + amount;
        if (count < c->window) {
            c->round_count = count;
        } else {
            double now = now_s(), started = c->round_start;
            c->round_start = now;
            c->round_count = 0;
            int64_t grown = c->window * 2 < p->max_window ? c->window * 2 : p->max_window;
            if (now - started <= GROW_WITHIN && p->grown + grown - c->window <= p->growth_budget) {
                p->grown += grown - c->window;
                int64_t extra = grown - c->window;
                c->window = grown;
                c->undelivered = 0;
                return pending + extra; /* at once: the sender is waiting */
            }
        }
    }
    if (pending * 4 < c->window) {
        c->undelivered = pending;
        return 0;
    }
    c->undelivered = 0;
    return pending;
}

static void delivered(struct pump *p, struct conn *c, size_t n) {
    if (!n || c->done)
        return;
    int64_t grant = credit_to_grant(p, c, (int64_t)n);
    if (grant) {
        uint8_t first[64];
        struct mpw w;
        mpw_init(&w, first, sizeof first);
        pump_frame_credit(&w, c->id, grant);
        to_link(p, &w);
    }
}

/* ---------------------------------------------------------------- local sockets */

static void shut_write(struct conn *c) {
    shutdown(c->fd, SHUT_WR);
    c->shut_pending = 0;
}

static void write_conn(struct pump *p, struct conn *c, const uint8_t *data, size_t n) {
    if (queued(c)) {
        buf_put(&c->out, data, n);
        return;
    }
    ssize_t sent = send(c->fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            finish(p, c, 1);
            return;
        }
        sent = 0;
    }
    delivered(p, c, (size_t)sent);
    if ((size_t)sent < n) {
        buf_put(&c->out, data + sent, n - (size_t)sent);
        update_conn(p, c);
    }
}

/* After a write to the connection's socket of `sent` bytes (-1: errno says why): 1 to
 * write on; 0 once the socket is full (EPOLLOUT is asked for) or the connection ended. */
static int wrote(struct pump *p, struct conn *c, ssize_t sent) {
    if (sent >= 0) {
        if (!c->closing)
            delivered(p, c, (size_t)sent);
        return 1;
    }
    if (errno == EAGAIN || errno == EINTR)
        update_conn(p, c);
    else if (c->closing)
        bury(p, c);
    else
        finish(p, c, 1);
    return 0;
}

/* what waits for the socket -> the socket: its pipe's bytes first, then `out` */
static void flush_conn(struct pump *p, struct conn *c) {
    while (c->piped) {
        ssize_t sent = splice(c->pipe[0], NULL, c->fd, NULL, c->piped, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (!wrote(p, c, sent))
            return;
        c->piped -= (size_t)sent;
    }
    while (buf_len(&c->out)) {
        ssize_t sent = send(c->fd, c->out.p + c->out.head, buf_len(&c->out), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (!wrote(p, c, sent))
            return;
        buf_take(&c->out, (size_t)sent);
    }
    if (c->shut_pending)
        shut_write(c);
    if (c->closing) {
        bury(p, c);
        return;
    }
    update_conn(p, c);
}

/* A read of the connection's socket that goes to the link without passing through here:
 * socket -> pipe, its frame's header, pipe -> link. What the link does not take at once
 * is queued behind the header as a plain read would have queued it. As recv(). */
static ssize_t splice_conn(struct pump *p, struct conn *c, size_t want) {
    ssize_t n = splice(c->fd, NULL, p->out_pipe[1], NULL, want, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n < 0 && errno == EINVAL) { /* not a socket splice(2) reads: plain reads from now on */
        p->splice_ok = 0;
        errno = EAGAIN;
    }
    if (n <= 0)
        return n;
    uint8_t head[PUMP_DATA_HEADER];
    pump_data_header(head, (uint64_t)c->id, (uint32_t)n);
    ssize_t h = send(p->link, head, sizeof head, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE), s = 0;
    if (h == (ssize_t)sizeof head)
        s = splice(p->out_pipe[0], NULL, p->link, NULL, (size_t)n, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    h = h < 0 ? 0 : h; /* (a link that failed: the next send_link finds out) */
    s = s < 0 ? 0 : s;
    p->lout_sent += (uint64_t)(h + s);
    buf_put(&p->lout, head + h, sizeof head - (size_t)h);
    if (pipe_to_buf(p->out_pipe[0], &p->lout, (size_t)(n - s)))
        gone_link(p); /* out of memory with the stream cut short: the link cannot go on */
    return n;
}

/* 1 if the socket filled the read (there may be more), else 0 */
static int read_conn(struct pump *p, struct conn *c) {
    size_t want = (size_t)(c->send_credit < p->max_chunk ? c->send_credit : p->max_chunk);
    ssize_t n;
    if (c->bulk && p->splice_ok && !buf_len(&p->lout) && !p->nfdq && !p->link_gone) {
        n = splice_conn(p, c, want);
    } else {
        uint8_t *at = buf_room(&p->lout, PUMP_DATA_HEADER + want);
        if (!at)
            return 0;
        n = recv(c->fd, at + PUMP_DATA_HEADER, want, MSG_DONTWAIT);
        if (n > 0) {
            pump_data_header(at, (uint64_t)c->id, (uint32_t)n);
            p->lout.tail += PUMP_DATA_HEADER + (size_t)n;
        }
    }
    if (n > 0) {
        c->bulk = n >= SPLICE_MIN;
        c->send_credit -= n;
        if (c->send_credit <= 0)
            update_conn(p, c);
        return (size_t)n == want;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n < 0) {
        finish(p, c, 1);
        return 0;
    }
    uint8_t first[64];
    struct mpw w;
    mpw_init(&w, first, sizeof first);
    pump_frame_eof(&w, c->id);
    to_link(p, &w);
    c->sent_eof = 1;
    maybe_finished(p, c);
    if (!c->done)
        update_conn(p, c);
    return 0;
}

static void on_conn_event(struct pump *p, struct conn *c, uint32_t events) {
    if (c->fd < 0)
        return;
    if (events & EPOLLOUT)
        flush_conn(p, c);
    if (c->fd < 0 || c->closing)
        return;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (can_read(p, c)) {
            for (int i = 0; i < READS_PER_EVENT && read_conn(p, c) && c->fd >= 0; i++)
                if (!can_read(p, c))
                    break;
            return;
        }
        if (events & (EPOLLHUP | EPOLLERR)) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                finish(p, c, 1);
                return;
            }
            if (!(c->mask & EPOLLOUT)) { /* nothing to do until credit comes: stop hearing it */
                epoll_ctl(p->ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->registered = 0;
                c->mask = 0;
            }
        }
    }
}

/* ---------------------------------------------------------------- the link's frames */

static void apply(struct pump *p, struct conn *c, const struct pump_frame *f) {
    switch (f->kind) {
    case PK_DATA:
        if (c->in_flight + f->len + c->undelivered > c->window) {
            char why[128];
            snprintf(why, sizeof why, "connection %lld: peer overran its flow-control window",
                     (long long)c->id);
            tell_python_error(p, why);
            return;
        }
        c->in_flight += f->len;
        if (!c->got_eof)
            write_conn(p, c, f->data, f->len);
        break;
    case PK_EOF:
        if (c->got_eof)
            break;
        c->got_eof = 1;
        if (queued(c))
            c->shut_pending = 1;
        else
            shut_write(c);
        maybe_finished(p, c);
        break;
    case PK_CLOSE:
        if (f->reset)
            abort_conn(p, c);
        else {
            c->peer_closed = 1;
            maybe_finished(p, c);
        }
        break;
    case PK_CREDIT: /* (a peer's absurd grants saturate instead of overflowing) */
        c->send_credit = f->amount > INT64_MAX - c->send_credit ? INT64_MAX : c->send_credit + f->amount;
        update_conn(p, c);
        break;
    default:
        break;
    }
}

static int is_conn_frame(enum pump_kind k) {
    return k == PK_DATA || k == PK_EOF || k == PK_CLOSE || k == PK_CREDIT;
}

static void on_link_frame(struct pump *p, const uint8_t *frame, size_t n) {
    struct pump_frame f;
    pump_parse(frame + 4, n - 4, &f);
    if (f.kind >= PK_ATTACH) {
        tell_python_error(p, "the peer sent a message that only this process may send");
        return;
    }
    if (is_conn_frame(f.kind)) {
        struct conn *c = lookup(p, f.conn);
        if (c) {
            if (c->syncing)
                buf_put(&c->pending, frame, n);
            else
                apply(p, c, &f);
            return;
        }
    }
    buf_put(&p->pout, frame, n); /* Python's: it runs the connection, or drops it */
}

/* consumes whole frames at the front of `b`; a frame over the limit stops it (0) */
static int each_frame(struct pump *p, struct buf *b, void (*fn)(struct pump *, const uint8_t *, size_t)) {
    while (buf_len(b) >= 4 && !p->broken) {
        const uint8_t *at = b->p + b->head;
        uint32_t len = pump_frame_len(at);
        if (len > PUMP_MAX_FRAME)
            return 0;
        if (buf_len(b) < 4 + (size_t)len)
            break;
        fn(p, at, 4 + (size_t)len);
        buf_take(b, 4 + (size_t)len);
    }
    return 1;
}

static void gone_link(struct pump *p) {
    if (p->link_gone)
        return;
    p->link_gone = 1;
    epoll_ctl(p->ep, EPOLL_CTL_DEL, p->link, NULL); /* (a hung-up socket would keep waking us) */
    p->link_mask = 0;
    while (p->all)
        abort_conn(p, p->all);
    for (int i = 0; i < p->nfdq; i++)
        close(p->fdq[i].fd);
    p->nfdq = 0;
    p->lout.head = p->lout.tail = 0;
    p->in_left = 0;
}

/* A pipe of the connection's own, made when its first payload comes by splice: what its
 * socket cannot take yet waits there, in the kernel, instead of being copied out. */
static int conn_pipe(struct conn *c) {
    if (c->pipe[0] < 0)
        c->pipe_size = open_pipe(c->pipe);
    return c->pipe_size > 0;
}

/* The frame that a read cut short, when it is a big Data frame of a connection the pump
 * runs: its bytes here go to the socket and the rest of its payload will come by splice
 * (in_left). Else the frame is read whole, as any other. While payloads are big, reads
 * of the link stop at the next frame's head (in_bulk): SMALL_RUN small Data frames end that. */
static void begin_payload(struct pump *p) {
    size_t have = buf_len(&p->lin);
    if (!have || p->broken)
        return;
    const uint8_t *at = p->lin.p + p->lin.head;
    int64_t id;
    size_t offset = 0;
    uint32_t size = 0;
    int r = have < 4 ? 0 : pump_data_prefix(at + 4, have - 4, &id, &offset, &size);
    if (r <= 0)
        return; /* too little to tell yet, or not a Data frame: read whole */
    uint32_t len = pump_frame_len(at);
    struct conn *c = lookup(p, id);
    size_t here = have - 4 - offset;
    int fits = c && p->splice_ok && len == offset + size && size - here >= SPLICE_MIN &&
               !c->syncing && !c->got_eof && c->in_flight + size + c->undelivered <= c->window;
    if (!fits) { /* (an overrun is named once the whole frame is here) */
        if (size < SPLICE_MIN / 4 && ++p->small_run >= SMALL_RUN)
            p->in_bulk = 0;
        return;
    }
    p->in_bulk = 1;
    p->small_run = 0;
    c->in_flight += size;
    p->in_conn = id;
    p->in_left = size - here;
    if (here)
        write_conn(p, c, at + 4 + offset, here);
    buf_take(&p->lin, have);
}

/* Some of the payload begin_payload() left to come: link -> the connection's pipe ->
 * its socket. When its pipe is full or copied bytes wait ahead of it, read into the
 * connection's queue instead; when the connection is gone, read and dropped. */
static void read_payload(struct pump *p) {
    struct conn *c = lookup(p, p->in_conn);
    int live = c && !c->got_eof; /* (else reset or failed meanwhile) */
    size_t room = live && !buf_len(&c->out) && conn_pipe(c) ? c->pipe_size - c->piped : 0;
    size_t want = p->in_left < LINK_READ_SIZE ? p->in_left : LINK_READ_SIZE;
    uint8_t scratch[16 * 1024], *at = NULL;
    ssize_t n;
    if (room) {
        n = splice(p->link, NULL, c->pipe[1], NULL, room < want ? room : want,
                   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    } else {
        at = live ? buf_room(&c->out, want) : NULL;
        if (live && !at)
            finish(p, c, 1); /* (out of memory: this connection's bytes are lost, so it ends) */
        n = recv(p->link, at ? at : scratch, at ? want : want < sizeof scratch ? want : sizeof scratch,
                 MSG_DONTWAIT);
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        gone_link(p); /* (a cut frame: Python hears EOF, as with any link that went away) */
        return;
    }
    p->in_left -= (size_t)n;
    if (room) {
        c->piped += (size_t)n;
        flush_conn(p, c);
    } else if (at) {
        c->out.tail += (size_t)n;
        update_conn(p, c);
    }
}

/* How much to read from the link: in bulk, to the end of the frame in `lin` and the head
 * of the next, so that a big payload is left for splice; else a lot at once. */
static size_t link_read_size(const struct pump *p) {
    size_t have = buf_len(&p->lin);
    if (!p->in_bulk)
        return LINK_READ_SIZE;
    if (have < 4)
        return PUMP_DATA_HEADER - have;
    const uint8_t *at = p->lin.p + p->lin.head;
    size_t frame = 4 + (size_t)pump_frame_len(at);
    return (frame > have ? frame - have : 0) + PUMP_DATA_HEADER;
}

static void read_link(struct pump *p) {
    if (p->in_left) {
        read_payload(p);
        return;
    }
    size_t want = link_read_size(p);
    uint8_t *at = buf_room(&p->lin, want);
    if (!at)
        return;
    ssize_t n = recv(p->link, at, want, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        gone_link(p); /* Python hears EOF once what the link brought has reached it */
        return;
    }
    p->lin.tail += (size_t)n;
    if (!each_frame(p, &p->lin, on_link_frame)) {
        /* Python's decoder names the trouble; nothing more is read */
        buf_put(&p->pout, p->lin.p + p->lin.head, buf_len(&p->lin));
        buf_take(&p->lin, buf_len(&p->lin));
        p->broken = 1;
        return;
    }
    begin_payload(p);
}

static void send_link(struct pump *p) {
    while (buf_len(&p->lout) && !p->link_gone) {
        size_t len = buf_len(&p->lout);
        struct iovec iov = {.iov_base = p->lout.p + p->lout.head};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        union {
            struct cmsghdr h;
            char space[CMSG_SPACE(sizeof(int))];
        } control;
        int with_fd = -1;
        if (p->nfdq) { /* a descriptor goes with the first byte of its frame's call */
            uint64_t pos = p->fdq[0].pos;
            if (pos > p->lout_sent) {
                if (pos - p->lout_sent < len)
                    len = (size_t)(pos - p->lout_sent);
            } else {
                with_fd = p->fdq[0].fd;
                if (p->nfdq > 1 && p->fdq[1].pos - p->lout_sent < len) /* one per call */
                    len = p->fdq[1].pos > p->lout_sent ? (size_t)(p->fdq[1].pos - p->lout_sent) : 1;
                memset(&control, 0, sizeof control);
                msg.msg_control = control.space;
                msg.msg_controllen = sizeof control.space;
                struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
                h->cmsg_level = SOL_SOCKET;
                h->cmsg_type = SCM_RIGHTS;
                h->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(h), &with_fd, sizeof(int));
            }
        }
        iov.iov_len = len;
        ssize_t sent = sendmsg(p->link, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            gone_link(p);
            return;
        }
        if (with_fd >= 0) {
            close(with_fd);
            memmove(p->fdq, p->fdq + 1, (size_t)(p->nfdq - 1) * sizeof p->fdq[0]);
            p->nfdq--;
        }
        buf_take(&p->lout, (size_t)sent);
        p->lout_sent += (uint64_t)sent;
        if ((size_t)sent < len)
            return;
    }
}

/* ---------------------------------------------------------------- Python's frames */

static void attach(struct pump *p, const struct pump_frame *f) {
    if (lookup(p, f->conn) || f->fd < 0 || p->link_gone) {
        if (f->fd >= 0)
            close((int)f->fd);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        close((int)f->fd);
        tell_close(p, f->conn, 1);
        return;
    }
    c->kind = S_CONN;
    c->pipe[0] = c->pipe[1] = -1;
    c->id = f->conn;
    c->fd = (int)f->fd;
    c->send_credit = f->credit;
    c->window = p->initial_window;
    c->round_start = now_s();
    c->syncing = 1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* (fails on unix: fine) */
    nonblocking(c->fd); /* (whatever the attacher left it: no read or splice here may wait) */
    if (p->count >= p->nbuckets)
        grow_table(p);
    size_t at = bucket_of(p, c->id);
    c->next_in_bucket = p->buckets[at];
    p->buckets[at] = c;
    p->count++;
    c->next_all = p->all;
    if (p->all)
        p->all->prev_all = c;
    p->all = c;
    uint8_t first[64];
    struct mpw w;
    mpw_init(&w, first, sizeof first);
    pump_frame_sync(&w, c->id);
    if (!w.failed)
        buf_put(&p->pout, w.buf, w.len);
    mpw_free(&w);
    update_conn(p, c);
}

static void synced(struct pump *p, struct conn *c) {
    c->syncing = 0;
    struct buf held = c->pending;
    memset(&c->pending, 0, sizeof c->pending);
    size_t at = held.head;
    while (at + 4 <= held.tail && !c->done && !p->broken) {
        const uint8_t *fr = held.p + at;
        size_t len = 4 + (size_t)pump_frame_len(fr);
        struct pump_frame f;
        pump_parse(fr + 4, len - 4, &f);
        apply(p, c, &f);
        at += len;
    }
    buf_free(&held);
}

static void on_python_frame(struct pump *p, const uint8_t *frame, size_t n) {
    struct pump_frame f;
    pump_parse(frame + 4, n - 4, &f);
    struct conn *c;
    switch (f.kind) {
    case PK_ATTACH:
        attach(p, &f);
        return;
    case PK_REPLAY: {
        struct pump_frame inner;
        if (f.len < 4)
            return;
        pump_parse(f.data + 4, f.len - 4, &inner);
        if (is_conn_frame(inner.kind) && (c = lookup(p, inner.conn)) != NULL)
            apply(p, c, &inner);
        return;
    }
    case PK_SYNCED:
        if ((c = lookup(p, f.conn)) != NULL && c->syncing)
            synced(p, c);
        return;
    case PK_RESET:
        if ((c = lookup(p, f.conn)) != NULL) {
            int64_t id = c->id;
            abort_conn(p, c);
            tell_close(p, id, 1);
        }
        return;
    case PK_LOCAL:
        return;
    default:
        break;
    }
    if (p->link_gone)
        return;
    /* a descriptor that came with this read goes no later than the next frame sent on */
    uint64_t pos = p->lout_sent + buf_len(&p->lout);
    for (int i = 0; i < p->narrived; i++) {
        if (p->nfdq < (int)(sizeof p->fdq / sizeof p->fdq[0]))
            p->fdq[p->nfdq++] = (struct fd_at){pos, p->arrived[i]};
        else
            close(p->arrived[i]);
    }
    p->narrived = 0;
    buf_put(&p->lout, frame, n);
}

static void python_gone(struct pump *p) {
    if (p->py_gone)
        return;
    p->py_gone = 1;
    epoll_ctl(p->ep, EPOLL_CTL_DEL, p->py, NULL);
    p->py_mask = 0;
}

static void read_python(struct pump *p) {
    uint8_t *at = buf_room(&p->pin, READ_SIZE);
    if (!at)
        return;
    struct iovec iov = {.iov_base = at, .iov_len = READ_SIZE};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(MAX_FDS * sizeof(int))];
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    ssize_t n = recvmsg(p->py, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
            if (p->narrived < MAX_FDS)
                p->arrived[p->narrived++] = fd;
            else
                close(fd);
        }
    }
    if (n <= 0) {
        python_gone(p);
        clock_gettime(CLOCK_MONOTONIC, &p->grace_end);
        p->grace_end.tv_sec += CLOSE_GRACE_MS / 1000;
        return;
    }
    p->pin.tail += (size_t)n;
    each_frame(p, &p->pin, on_python_frame); /* (Python's encoder never makes one too big) */
}

static void send_python(struct pump *p) {
    while (buf_len(&p->pout)) {
        ssize_t sent = send(p->py, p->pout.p + p->pout.head, buf_len(&p->pout), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            p->pout.head = p->pout.tail = 0; /* Python is gone: its read side too */
            python_gone(p);
            clock_gettime(CLOCK_MONOTONIC, &p->grace_end);
            return;
        }
        buf_take(&p->pout, (size_t)sent);
    }
}

/* ---------------------------------------------------------------- the loop */

static void watch(struct pump *p, int fd, enum src_kind *kind, uint32_t *mask, uint32_t want, int gone) {
    if (gone || want == *mask)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = kind};
    epoll_ctl(p->ep, EPOLL_CTL_MOD, fd, &ev);
    *mask = want;
}

static void update_watches(struct pump *p) {
    size_t lout = buf_len(&p->lout), pout = buf_len(&p->pout);
    int congested = p->congested ? lout > LOW_WATER : lout > HIGH_WATER;
    if (congested != p->congested) {
        p->congested = congested;
        for (struct conn *c = p->all; c; c = c->next_all)
            if (!c->done)
                update_conn(p, c);
    }
    p->py_full = p->py_full ? pout > LOW_WATER : pout > HIGH_WATER;
    uint32_t link = 0, py = 0;
    if (!p->link_gone) {
        if (!p->broken && !p->py_full && !p->py_gone)
            link |= EPOLLIN;
        if (lout)
            link |= EPOLLOUT;
    }
    if (!p->py_gone) {
        if (!p->congested || p->link_gone)
            py |= EPOLLIN;
        if (pout)
            py |= EPOLLOUT;
    }
    watch(p, p->link, &p->link_kind, &p->link_mask, link, p->link_gone);
    watch(p, p->py, &p->py_kind, &p->py_mask, py, p->py_gone);
}

static int past(const struct timespec *t) {
    struct timespec n;
    clock_gettime(CLOCK_MONOTONIC, &n);
    return n.tv_sec > t->tv_sec || (n.tv_sec == t->tv_sec && n.tv_nsec >= t->tv_nsec);
}

static void bury_the_dead(struct pump *p) {
    while (p->dead) {
        struct conn *c = p->dead;
        p->dead = c->next_dead;
        buf_free(&c->out);
        buf_free(&c->pending);
        free(c);
    }
}

static void run(struct pump *p) {
    struct epoll_event events[128];
    for (;;) {
        int n = epoll_wait(p->ep, events, 128, p->py_gone ? 50 : -1);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            enum src_kind *kind = events[i].data.ptr;
            uint32_t ev = events[i].events;
            /* a hang-up is read even when reading waits (or it would wake us forever) */
            if (*kind == S_LINK && !p->link_gone) {
                if (ev & EPOLLOUT)
                    send_link(p);
                if ((ev & EPOLLIN) || ((ev & (EPOLLHUP | EPOLLERR)) && !p->broken))
                    read_link(p);
                else if (ev & (EPOLLHUP | EPOLLERR))
                    gone_link(p); /* broken: Python is ending the link anyway */
            } else if (*kind == S_PY && !p->py_gone) {
                if (ev & EPOLLOUT)
                    send_python(p);
                if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    read_python(p);
            } else {
                on_conn_event(p, (struct conn *)kind, ev);
            }
        }
        send_link(p);
        send_python(p);
        bury_the_dead(p);
        if (p->link_gone && !buf_len(&p->pout) && !p->py_shut && !p->py_gone) {
            shutdown(p->py, SHUT_WR); /* Python reads the link's end */
            p->py_shut = 1;
        }
        if (p->py_gone && (p->link_gone || !buf_len(&p->lout) || past(&p->grace_end)))
            break;
        update_watches(p);
    }
    while (p->all)
        abort_conn(p, p->all);
    bury_the_dead(p);
}

static void destroy(struct pump *p) {
    close_pipe(p->out_pipe);
    for (int i = 0; i < p->nfdq; i++)
        close(p->fdq[i].fd);
    for (int i = 0; i < p->narrived; i++)
        close(p->arrived[i]);
    close(p->link);
    close(p->py);
    close(p->ep);
    buf_free(&p->lin);
    buf_free(&p->lout);
    buf_free(&p->pin);
    buf_free(&p->pout);
    free(p->buckets);
    free(p);
}

static void *thread_main(void *arg) {
    struct pump *p = arg;
    run(p);
    destroy(p);
    return NULL;
}

/* The pipe that reads of connections go to the link through; without it (or with
 * MIRRORD_PUMP_SPLICE=0, to compare) every byte is copied through the pump. */
static void open_out_pipe(struct pump *p) {
    const char *choice = getenv("MIRRORD_PUMP_SPLICE");
    if (choice && strcmp(choice, "0") == 0)
        return;
    p->splice_ok = open_pipe(p->out_pipe) > 0;
}

/* Starts the pump on `link` (the link's socket) and `py` (its end of Python's socket
 * pair); both belong to the pump from here on, also when it fails (-errno). */
EXPORT int mirrord_pump_start(int link, int py, int64_t initial_window, int64_t max_window,
                              int64_t growth_budget, int64_t max_chunk) {
    struct pump *p = calloc(1, sizeof *p);
    int err = ENOMEM;
    if (!p)
        goto fail;
    p->out_pipe[0] = p->out_pipe[1] = -1;
    p->link_kind = S_LINK;
    p->py_kind = S_PY;
    p->link = link;
    p->py = py;
    p->initial_window = initial_window;
    p->max_window = max_window;
    p->growth_budget = growth_budget;
    p->max_chunk = max_chunk;
    p->nbuckets = 1024;
    p->buckets = calloc(p->nbuckets, sizeof *p->buckets);
    p->ep = epoll_create1(EPOLL_CLOEXEC);
    if (!p->buckets || p->ep < 0) {
        err = p->ep < 0 ? errno : ENOMEM;
        goto fail;
    }
    open_out_pipe(p);
    nonblocking(link); /* (splice(2) waits on a blocking socket, whatever its flags say) */
    p->link_mask = p->py_mask = EPOLLIN;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &p->link_kind};
    struct epoll_event pev = {.events = EPOLLIN, .data.ptr = &p->py_kind};
    if (epoll_ctl(p->ep, EPOLL_CTL_ADD, link, &ev) || epoll_ctl(p->ep, EPOLL_CTL_ADD, py, &pev)) {
        err = errno;
        goto fail;
    }
    /* signals stay with the process's other threads (Python handles them in its main one) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    err = pthread_create(&thread, &attr, thread_main, p);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err)
        goto fail;
    return 0;
fail:
    if (p) {
        if (p->ep > 0)
            close(p->ep);
        close_pipe(p->out_pipe);
        free(p->buckets);
        free(p);
    }
    close(link);
    close(py);
    return -err;
}
