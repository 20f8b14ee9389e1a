/* Outgoing TCP and UDP: connect()/sendto() to addresses that go through the target. The
 * intproxy connects from the target and either hands over that socket (it replaces the
 * app's descriptor) or names a relay address the app's socket is connected to instead;
 * getpeername()/recvfrom() then report the remote address. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "real.h"
#include "relay.h"

/* ------------------------------------------------------------------ helpers */

socklen_t shaped_address(int family, const char *host, int port, struct sockaddr_storage *out) {
    memset(out, 0, sizeof *out);
    if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) {
            struct in_addr v4;
            if (inet_pton(AF_INET, host, &v4) != 1)
                return 0;
            in6->sin6_addr.s6_addr[10] = in6->sin6_addr.s6_addr[11] = 0xff;
            memcpy(&in6->sin6_addr.s6_addr[12], &v4, 4);
        }
        return sizeof *in6;
    }
    struct sockaddr_in *in = (struct sockaddr_in *)out;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
        return 0;
    return sizeof *in;
}

void copy_out_address(const struct sockaddr_storage *from, socklen_t from_len,
                      struct sockaddr *to, socklen_t *to_len) {
    if (!to || !to_len)
        return;
    /* as the kernel does: cut to the caller's room, tell the real length */
    memcpy(to, from, *to_len < from_len ? *to_len : from_len);
    *to_len = from_len;
}

int same_address(const struct sockaddr *a, socklen_t alen, const struct sockaddr *b,
                 socklen_t blen) {
    struct ipkey ia, ib;
    int pa, pb;
    if (ipkey_from_sockaddr(a, alen, &ia, &pa) || ipkey_from_sockaddr(b, blen, &ib, &pb))
        return 0;
    return pa == pb && ia.family == ib.family && !memcmp(ia.bytes, ib.bytes, sizeof ia.bytes);
}

int socket_type(int fd) {
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len))
        return -1;
    return type;
}

static void address_text(const struct sockaddr *sa, char *out, size_t cap) {
    if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
    else
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
}

/* Options an app may have set before connect(), carried over to an adopted socket. */
static const int CARRIED_TCP[][2] = {
    {SOL_SOCKET, SO_KEEPALIVE}, {IPPROTO_TCP, TCP_NODELAY},  {IPPROTO_TCP, TCP_KEEPIDLE},
    {IPPROTO_TCP, TCP_KEEPINTVL}, {IPPROTO_TCP, TCP_KEEPCNT},
};
static const int CARRIED_UDP[][2] = {{SOL_SOCKET, SO_BROADCAST}};

int adopt_socket(int fd, int incoming, int udp) {
    const int(*options)[2] = udp ? CARRIED_UDP : CARRIED_TCP;
    size_t count = udp ? 1 : sizeof CARRIED_TCP / sizeof CARRIED_TCP[0];
    for (size_t i = 0; i < count; i++) {
        int value;
        socklen_t len = sizeof value;
        if (!getsockopt(fd, options[i][0], options[i][1], &value, &len))
            setsockopt(incoming, options[i][0], options[i][1], &value, len);
    }
    int status = real_fcntl(fd, F_GETFL);
    int descriptor = real_fcntl(fd, F_GETFD);
    int rc = real_dup3(incoming, fd, descriptor >= 0 && (descriptor & FD_CLOEXEC) ? O_CLOEXEC : 0);
    int saved = errno;
    real_close(incoming);
    if (rc < 0) {
        errno = saved;
        return -1;
    }
    /* the adopted description must block (or not) as the app's did */
    if (status >= 0)
        real_fcntl(fd, F_SETFL, status);
    return 0;
}

static int fail(int err) {
    errno = err;
    return -1;
}

/* Ask the intproxy to connect to `addr` from the target. 0 and a reply (and maybe a
 * descriptor), or -1 with errno as a local connect would set it. */
static int ask_connect(int udp, const struct sockaddr *addr, socklen_t len, int want_fd,
                       int nonblocking, struct reply *reply, int *fd) {
    char host[INET6_ADDRSTRLEN];
    struct ipkey ip;
    int port;
    address_text(addr, host, sizeof host);
    ipkey_from_sockaddr(addr, len, &ip, &port);
    if (relay_debug())
        relay_log("connect %s %s:%d through the target", udp ? "udp" : "tcp", host, port);
    *fd = -1;
    uint8_t buf[256];
    struct mpw w;
    int64_t req = chan_next_req();
    mpw_init(&w, buf, sizeof buf);
    frame_connect(&w, req, udp ? "udp" : "tcp", host, port, want_fd, nonblocking);
    int rc = w.failed ? CHAN_UNAVAILABLE : chan_request(w.buf, w.len, req, reply, fd, CHAN_STICKY);
    mpw_free(&w);
    if (rc != CHAN_OK)
        return fail(ENETUNREACH);
    if (reply->type == R_FAILED) {
        int err = reply->err > 0 ? (int)reply->err : EIO;
        reply_free(reply);
        return fail(err);
    }
    if ((reply->type == R_CONNECTED_FD && *fd >= 0) || reply->type == R_CONNECTED)
        return 0;
    if (*fd >= 0)
        real_close(*fd);
    reply_free(reply);
    return fail(EPROTO);
}

/* What the filters call this address: the names the app resolved to it. */
static int decide(int udp, const struct ipkey *ip, int port) {
    char names[NAMES_PER_ADDRESS][256];
    const char *refs[NAMES_PER_ADDRESS];
    size_t n = 0;
    if (relay_rules.filter_mode != FILTER_NONE && relay_rules.idx[udp ? IDX_UDP : IDX_TCP].nnames) {
        n = names_of(ip, names);
        for (size_t i = 0; i < n; i++)
            refs[i] = names[i];
    }
    return rules_outgoing_remote(&relay_rules, udp, ip, port, refs, n);
}

/* Where does this socket go? 1: through the target (`udp` tells the protocol). */
static int routed(int fd, const struct sockaddr *addr, socklen_t len, int *udp) {
    struct ipkey ip;
    int port;
    if (!relay_on() || !addr || len < (socklen_t)sizeof(sa_family_t) ||
        (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))
        return 0;
    int type = socket_type(fd);
    if (type != SOCK_STREAM && type != SOCK_DGRAM)
        return 0;
    if (ipkey_from_sockaddr(addr, len, &ip, &port))
        return 0;
    *udp = type == SOCK_DGRAM;
    return decide(*udp, &ip, port);
}

/* Can `fd` take over a socket connected in the target, losing nothing? */
static int adoptable(int fd) {
    struct sockaddr_storage here;
    socklen_t len = sizeof here;
    int port;
    struct ipkey ip;
    /* a socket bound to a local address or port must keep it: relay instead */
    if (real_getsockname(fd, (struct sockaddr *)&here, &len) ||
        ipkey_from_sockaddr((struct sockaddr *)&here, len, &ip, &port))
        return 0;
    return port == 0;
}

/* ------------------------------------------------------------------ connect */

/* Remember that `fd` reaches `addr` (the remote) through `relay`. */
static void redirect(int fd, const struct sockaddr_storage *relay, socklen_t relay_len,
                     const struct sockaddr *addr, socklen_t len) {
    pthread_mutex_lock(&fd_lock);
    struct fdstate *st = fd_ensure(fd);
    if (st) {
        st->redirected = 1;
        st->relay = *relay;
        st->relay_len = relay_len;
        memset(&st->remote, 0, sizeof st->remote);
        memcpy(&st->remote, addr, len < sizeof st->remote ? len : sizeof st->remote);
        st->remote_len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                     : sizeof(struct sockaddr_in);
        /* the remote as getpeername shows it: no flow label, no scope */
        if (addr->sa_family == AF_INET6) {
            ((struct sockaddr_in6 *)&st->remote)->sin6_flowinfo = 0;
            ((struct sockaddr_in6 *)&st->remote)->sin6_scope_id = 0;
        }
    }
    pthread_mutex_unlock(&fd_lock);
}

static int connect_remote(int fd, const struct sockaddr *addr, socklen_t len, int udp) {
    struct sockaddr_storage relay;
    socklen_t relay_len = 0;
    /* connect() again on a connecting socket: the same relay, the kernel's own errno */
    pthread_mutex_lock(&fd_lock);
    struct fdstate *st = fd_get(fd);
    if (st && st->redirected && same_address((struct sockaddr *)&st->remote, st->remote_len,
                                              addr, len)) {
        relay = st->relay;
        relay_len = st->relay_len;
    }
    pthread_mutex_unlock(&fd_lock);
    if (relay_len)
        return real_connect(fd, (struct sockaddr *)&relay, relay_len);

    int handed;
    struct reply reply;
    /* a non-blocking socket must not wait for a slow remote: the intproxy may relay first */
    int status = real_fcntl(fd, F_GETFL);
    int nonblocking = status >= 0 && (status & O_NONBLOCK);
    if (ask_connect(udp, addr, len, adoptable(fd), nonblocking, &reply, &handed))
        return -1;
    if (reply.type == R_CONNECTED_FD) {
        reply_free(&reply);
        fd_forget(fd);
        if (adopt_socket(fd, handed, udp))
            return -1;
        /* an end of the intproxy's relay (not the agent's socket) is peered with it */
        relay_len = sizeof relay;
        if (!real_getpeername(fd, (struct sockaddr *)&relay, &relay_len) &&
            !same_address((struct sockaddr *)&relay, relay_len, addr, len))
            redirect(fd, &relay, relay_len, addr, len);
        return 0;
    }
    relay_len = shaped_address(addr->sa_family, reply.local_host, (int)reply.local_port, &relay);
    reply_free(&reply);
    if (!relay_len)
        return fail(EPROTO);
    redirect(fd, &relay, relay_len, addr, len);
    return real_connect(fd, (struct sockaddr *)&relay, relay_len);
}

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    int udp = 0;
    real_init();
    if (!routed(fd, addr, len, &udp))
        return real_connect(fd, addr, len);
    return connect_remote(fd, addr, len, udp);
}

/* The remote address if `peer` is this socket's relay (a reused descriptor must not
 * inherit a stale redirect), else 0. */
static int remote_of(int fd, const struct sockaddr *peer, socklen_t peer_len,
                     struct sockaddr_storage *remote, socklen_t *remote_len) {
    int found = 0;
    pthread_mutex_lock(&fd_lock);
    struct fdstate *st = fd_get(fd);
    if (st) {
        for (size_t i = 0; i < st->npairs && !found; i++)
            if (same_address((struct sockaddr *)&st->pairs[i].relay, st->pairs[i].relay_len,
                             peer, peer_len)) {
                *remote = st->pairs[i].remote;
                *remote_len = st->pairs[i].remote_len;
                found = 1;
            }
        if (!found && st->redirected &&
            same_address((struct sockaddr *)&st->relay, st->relay_len, peer, peer_len)) {
            *remote = st->remote;
            *remote_len = st->remote_len;
            found = 1;
        }
    }
    pthread_mutex_unlock(&fd_lock);
    return found;
}

EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len) {
    real_init();
    if (!fd_tracked(fd) || !addr || !len)
        return real_getpeername(fd, addr, len);
    struct sockaddr_storage peer, remote;
    socklen_t peer_len = sizeof peer, remote_len;
    if (real_getpeername(fd, (struct sockaddr *)&peer, &peer_len))
        return -1;
    if (remote_of(fd, (struct sockaddr *)&peer, peer_len, &remote, &remote_len))
        copy_out_address(&remote, remote_len, addr, len);
    else
        copy_out_address(&peer, peer_len, addr, len);
    return 0;
}

/* ------------------------------------------------------------------ UDP */

/* The relay address to send a datagram for `addr` to (0 when it stays local). */
static socklen_t udp_relay(int fd, const struct sockaddr *addr, socklen_t len,
                           struct sockaddr_storage *relay) {
    int udp = 0;
    if (!routed(fd, addr, len, &udp) || !udp)
        return 0;
    socklen_t found = 0;
    pthread_mutex_lock(&fd_lock);
    struct fdstate *st = fd_get(fd);
    for (size_t i = 0; st && i < st->npairs && !found; i++)
        if (same_address((struct sockaddr *)&st->pairs[i].remote, st->pairs[i].remote_len, addr,
                         len)) {
            *relay = st->pairs[i].relay;
            found = st->pairs[i].relay_len;
        }
    pthread_mutex_unlock(&fd_lock);
    if (found)
        return found;
    int handed;
    struct reply reply;
    if (ask_connect(1, addr, len, 0, 0, &reply, &handed))
        return (socklen_t)-1;
    if (handed >= 0)
        real_close(handed);
    found = shaped_address(addr->sa_family, reply.local_host, (int)reply.local_port, relay);
    reply_free(&reply);
    if (!found) {
        errno = EPROTO;
        return (socklen_t)-1;
    }
    pthread_mutex_lock(&fd_lock);
    st = fd_ensure(fd);
    struct udp_pair *grown = st ? realloc(st->pairs, (st->npairs + 1) * sizeof *grown) : NULL;
    if (grown) {
        struct udp_pair *p = &grown[st->npairs++];
        memset(p, 0, sizeof *p);
        memcpy(&p->remote, addr, len < sizeof p->remote ? len : sizeof p->remote);
        p->remote_len = len < sizeof p->remote ? len : sizeof p->remote;
        p->relay = *relay;
        p->relay_len = found;
        st->pairs = grown;
    }
    pthread_mutex_unlock(&fd_lock);
    return found;
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr,
                      socklen_t len) {
    real_init();
    if (addr && relay_on()) {
        struct sockaddr_storage relay;
        socklen_t relay_len = udp_relay(fd, addr, len, &relay);
        if (relay_len == (socklen_t)-1)
            return -1;
        if (relay_len)
            return real_sendto(fd, buf, n, flags, (struct sockaddr *)&relay, relay_len);
    }
    return real_sendto(fd, buf, n, flags, addr, len);
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    real_init();
    if (msg && msg->msg_name && relay_on()) {
        struct sockaddr_storage relay;
        socklen_t relay_len = udp_relay(fd, msg->msg_name, msg->msg_namelen, &relay);
        if (relay_len == (socklen_t)-1)
            return -1;
        if (relay_len) {
            struct msghdr copy = *msg;
            copy.msg_name = &relay;
            copy.msg_namelen = relay_len;
            return real_sendmsg(fd, &copy, flags);
        }
    }
    return real_sendmsg(fd, msg, flags);
}

/* A datagram's source: the remote it stands for when it came from one of our relays. */
static void translate_source(int fd, struct sockaddr *addr, socklen_t *len, socklen_t room) {
    struct sockaddr_storage remote;
    socklen_t remote_len;
    if (!addr || !len || !fd_tracked(fd))
        return;
    socklen_t got = *len < room ? *len : room;
    if (remote_of(fd, addr, got, &remote, &remote_len)) {
        *len = room;
        copy_out_address(&remote, remote_len, addr, len);
    }
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr,
                        socklen_t *len) {
    real_init();
    socklen_t room = len ? *len : 0;
    ssize_t k = real_recvfrom(fd, buf, n, flags, addr, len);
    if (k >= 0)
        translate_source(fd, addr, len, room);
    return k;
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    real_init();
    socklen_t room = msg ? msg->msg_namelen : 0;
    ssize_t k = real_recvmsg(fd, msg, flags);
    if (k >= 0 && msg && msg->msg_name)
        translate_source(fd, msg->msg_name, &msg->msg_namelen, room);
    return k;
}

/* ------------------------------------------------------------------ descriptors */

EXPORT int close(int fd) {
    real_init();
    if (fd_tracked(fd))
        fd_forget(fd); /* before the real close: the number is ours until then */
    return real_close(fd);
}

static int shared(int from, int to) {
    if (to >= 0 && fd_tracked(from)) {
        pthread_mutex_lock(&fd_lock);
        fd_share(from, to);
        pthread_mutex_unlock(&fd_lock);
    }
    return to;
}

EXPORT int dup(int fd) {
    real_init();
    return shared(fd, real_dup(fd));
}

EXPORT int dup2(int from, int to) {
    real_init();
    if (from != to && fd_tracked(to) && real_fcntl(from, F_GETFD) >= 0)
        fd_forget(to);
    int rc = real_dup2(from, to);
    return from == to ? rc : shared(from, rc);
}

EXPORT int dup3(int from, int to, int flags) {
    real_init();
    if (from != to && fd_tracked(to) && real_fcntl(from, F_GETFD) >= 0)
        fd_forget(to);
    return shared(from, real_dup3(from, to, flags));
}

static int fcntl_common(int fd, int cmd, void *arg) {
    real_init();
    int rc = real_fcntl(fd, cmd, arg);
    if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && rc >= 0)
        shared(fd, rc);
    return rc;
}

EXPORT int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *); /* as glibc does: every argument fits a pointer */
    va_end(ap);
    return fcntl_common(fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(fd, cmd, arg);
}
