/* Incoming traffic: the app's listening sockets receive the target's connections.
 * bind(P) binds for real (P if free, else any port) and remembers P; listen()
 * subscribes the target's port; accept() asks the intproxy who is behind each
 * connection (and takes the stolen socket itself when it comes along); getsockname()
 * reports P on the listener and the target's address on an accepted socket. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "real.h"
#include "relay.h"

static const char *MODES[] = {"off", "mirror", "steal"};
/* The backlog of a subscribed listener: the target's clients queue at the agent, and the
 * intproxy's connections into the app come in bursts that a small queue (http.server's
 * is 5) would drop, each dropped SYN waiting a second for its retransmission. */
#define TARGET_BACKLOG 1024

static int with_port(const struct sockaddr *addr, socklen_t len, int port,
                     struct sockaddr_storage *out) {
    memset(out, 0, sizeof *out);
    memcpy(out, addr, len < sizeof *out ? len : sizeof *out);
    if (addr->sa_family == AF_INET6)
        ((struct sockaddr_in6 *)out)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)out)->sin_port = htons((uint16_t)port);
    return 0;
}

static int bound_port(int fd) {
    struct sockaddr_storage here;
    socklen_t len = sizeof here;
    struct ipkey ip;
    int port;
    if (real_getsockname(fd, (struct sockaddr *)&here, &len) ||
        ipkey_from_sockaddr((struct sockaddr *)&here, len, &ip, &port))
        return -1;
    return port;
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    struct ipkey ip;
    int port;
    real_init();
    if (!relay_on() || relay_rules.incoming_mode == INCOMING_OFF || !addr ||
        len < (socklen_t)sizeof(sa_family_t) ||
        (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) ||
        ipkey_from_sockaddr(addr, len, &ip, &port) || socket_type(fd) != SOCK_STREAM ||
        !rules_incoming_wanted(&relay_rules, &ip, port))
        return real_bind(fd, addr, len);
    struct sockaddr_storage local;
    with_port(addr, len, rules_listen_port(&relay_rules, port), &local);
    int rc = real_bind(fd, (struct sockaddr *)&local, len);
    if (rc && errno == EADDRINUSE && !rules_has_listen_port(&relay_rules, port)) {
        /* the port is taken on this machine: any will do, the app still sees its own */
        with_port(addr, len, 0, &local);
        rc = real_bind(fd, (struct sockaddr *)&local, len);
    }
    if (rc)
        return rc;
    struct stat info;
    if (fstat(fd, &info))
        return 0;
    int remote_port = rules_remote_port(&relay_rules, port);
    pthread_mutex_lock(&fd_lock);
    struct fdstate *st = fd_ensure(fd);
    if (st) {
        st->listening = 1;
        st->subscribed = 0;
        st->requested_port = port;
        st->remote_port = remote_port;
        st->inode = (unsigned long long)info.st_ino;
        st->not_listener = 0;
    }
    pthread_mutex_unlock(&fd_lock);
    /* the intproxy keeps it by inode: a process that inherits the socket finds it there */
    uint8_t buf[128];
    struct mpw w;
    struct reply reply;
    int handed = -1;
    int64_t req = chan_next_req();
    mpw_init(&w, buf, sizeof buf);
    frame_register_listener(&w, req, (int64_t)info.st_ino, port, remote_port);
    if (!w.failed && chan_request(w.buf, w.len, req, &reply, &handed, 0) == CHAN_OK)
        reply_free(&reply); /* listen() reports a missing intproxy; a bound socket is local */
    mpw_free(&w);
    if (handed >= 0)
        real_close(handed);
    if (relay_debug())
        relay_log("bind :%d (really :%d) for the target's port %d", port, bound_port(fd),
                  remote_port);
    return 0;
}

static int ask_listener(unsigned long long inode, struct reply *reply);

static int stream_inet(int fd) {
    struct sockaddr_storage here;
    socklen_t len = sizeof here;
    return socket_type(fd) == SOCK_STREAM && !real_getsockname(fd, (struct sockaddr *)&here, &len) &&
           (here.ss_family == AF_INET || here.ss_family == AF_INET6);
}

/* What is known of `fd` as one of the app's listeners (copied out; 0: not one). Known here
 * when this process bound it; else, if `ask`, the intproxy is asked once (the socket came
 * from another process); the answer is kept either way, by the socket's inode. */
static int listener(int fd, struct fdstate *out, int ask) {
    struct stat info;
    int found = 0, not_ours = 0, tracked = fd_tracked(fd);
    if ((!tracked && !ask) || relay_rules.incoming_mode == INCOMING_OFF || fstat(fd, &info))
        return 0;
    unsigned long long inode = (unsigned long long)info.st_ino;
    if (tracked) {
        pthread_mutex_lock(&fd_lock);
        struct fdstate *st = fd_get(fd);
        if (st && st->listening && st->inode == inode) {
            *out = *st;
            out->pairs = NULL;
            found = 1;
        }
        not_ours = st && st->not_listener == inode;
        pthread_mutex_unlock(&fd_lock);
    }
    if (found || not_ours || !ask)
        return found;
    int known = 0;
    struct reply reply = {0};
    if (stream_inet(fd) && ask_listener(inode, &reply))
        return 0; /* no intproxy: ask again next time */
    known = reply.type == R_LISTENER_INFO_REPLY && reply.known;
    pthread_mutex_lock(&fd_lock);
    struct fdstate *st = fd_ensure(fd);
    if (st && known) {
        st->listening = 1;
        st->inode = inode;
        st->requested_port = (int)reply.requested_port;
        st->remote_port = (int)reply.remote_port;
        st->subscribed = reply.subscribed;
        *out = *st;
        out->pairs = NULL;
    } else if (st) {
        st->listening = 0;
        st->not_listener = inode; /* (a unix socket, say, is never asked about again) */
    }
    pthread_mutex_unlock(&fd_lock);
    reply_free(&reply);
    return known;
}

/* ListenerInfo: 0 and the reply, or -1 when the intproxy cannot be asked. */
static int ask_listener(unsigned long long inode, struct reply *reply) {
    uint8_t buf[64];
    struct mpw w;
    int handed = -1;
    int64_t req = chan_next_req();
    mpw_init(&w, buf, sizeof buf);
    frame_listener_info(&w, req, (int64_t)inode);
    int got = w.failed ? CHAN_UNAVAILABLE : chan_request(w.buf, w.len, req, reply, &handed, 0);
    mpw_free(&w);
    if (handed >= 0)
        real_close(handed);
    return got == CHAN_OK ? 0 : -1;
}

EXPORT int listen(int fd, int backlog) {
    struct fdstate st;
    real_init();
    int rc = real_listen(fd, backlog);
    if (rc || !relay_on() || !listener(fd, &st, 1) || st.subscribed)
        return rc;
    struct sockaddr_storage here;
    socklen_t len = sizeof here;
    char host[INET6_ADDRSTRLEN] = "127.0.0.1";
    struct ipkey ip;
    int port;
    if (real_getsockname(fd, (struct sockaddr *)&here, &len) ||
        ipkey_from_sockaddr((struct sockaddr *)&here, len, &ip, &port))
        return rc;
    if (ipkey_is_loopback(&ip))
        /* the intproxy connects to the app over loopback */
        strcpy(host, here.ss_family == AF_INET6 && ip.family == AF_INET6 ? "::1" : "127.0.0.1");
    else
        inet_ntop(ip.family, ip.bytes, host, sizeof host);
    uint8_t buf[512];
    struct mpw w;
    struct reply reply;
    int handed = -1;
    int64_t req = chan_next_req();
    mpw_init(&w, buf, sizeof buf);
    frame_subscribe(&w, req, st.remote_port, MODES[relay_rules.incoming_mode],
                    relay_rules.http_filter, host, port, 1, (int64_t)st.inode);
    int got = w.failed ? CHAN_UNAVAILABLE : chan_request(w.buf, w.len, req, &reply, &handed, CHAN_KEEP);
    mpw_free(&w);
    if (handed >= 0)
        real_close(handed);
    if (got != CHAN_OK) {
        errno = ENETUNREACH;
        return -1;
    }
    int type = reply.type, err = (int)reply.err;
    if (type == R_FAILED) /* errno alone would not say why */
        relay_log("cannot receive the target's port %d: %s", st.remote_port, reply.message);
    reply_free(&reply);
    if (type == R_FAILED) {
        errno = err > 0 ? err : EIO;
        return -1;
    }
    if (type != R_SUBSCRIBED) {
        errno = EPROTO;
        return -1;
    }
    pthread_mutex_lock(&fd_lock);
    struct fdstate *live = fd_get(fd);
    if (live && live->listening)
        live->subscribed = 1;
    pthread_mutex_unlock(&fd_lock);
    if (backlog >= 0 && backlog < TARGET_BACKLOG)
        real_listen(fd, TARGET_BACKLOG);
    if (relay_debug())
        relay_log("subscribed to the target's port %d (%s)", st.remote_port,
                  MODES[relay_rules.incoming_mode]);
    return 0;
}

/* The intproxy's answer about the connection from `peer_port`: the origin, or the
 * stolen socket itself (then `fd` becomes it, and `peer` its peer). 0: a local client,
 * or no answer. */
static int ask_origin(int fd, int listen_port, int peer_port, struct sockaddr_storage *peer,
                      socklen_t *peer_len, struct sockaddr_storage *remote, socklen_t *remote_len,
                      struct sockaddr_storage *local, socklen_t *local_len) {
    uint8_t buf[128];
    struct mpw w;
    struct reply reply;
    int stolen = -1, family = peer->ss_family;
    int64_t req = chan_next_req();
    mpw_init(&w, buf, sizeof buf);
    frame_conn_info(&w, req, listen_port, peer_port);
    int got = w.failed ? CHAN_UNAVAILABLE : chan_request(w.buf, w.len, req, &reply, &stolen, 0);
    mpw_free(&w);
    if (got != CHAN_OK)
        return 0;
    if (reply.type != R_CONN_INFO_REPLY) { /* a local client, not one of the target's */
        reply_free(&reply);
        if (stolen >= 0)
            real_close(stolen);
        return 0;
    }
    *local_len = shaped_address(family, reply.local_host, (int)reply.local_port, local);
    if (stolen >= 0) {
        /* the stolen socket itself takes the stand-in's place: no byte is relayed */
        fd_forget(fd);
        if (adopt_socket(fd, stolen, 0) == 0) {
            *peer_len = sizeof *peer;
            real_getpeername(fd, (struct sockaddr *)peer, peer_len);
            *remote = *peer;
            *remote_len = *peer_len;
        }
    } else {
        *remote_len = shaped_address(family, reply.remote_host, (int)reply.remote_port, remote);
    }
    reply_free(&reply);
    return *remote_len != 0;
}

/* Who is really behind a connection the app accepted from a subscribed listener: the
 * origin table says, else the intproxy is asked. */
static void claim(int listen_fd, int fd, struct sockaddr *addr, socklen_t *addrlen,
                  socklen_t room) {
    struct fdstate st;
    if (!listener(listen_fd, &st, 1) || !st.subscribed)
        return;
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    struct ipkey ip;
    int peer_port;
    if (real_getpeername(fd, (struct sockaddr *)&peer, &peer_len) ||
        ipkey_from_sockaddr((struct sockaddr *)&peer, peer_len, &ip, &peer_port))
        return;
    int listen_port = bound_port(listen_fd);
    struct sockaddr_storage remote, local;
    socklen_t remote_len = 0, local_len = 0;
    if (!origin_lookup(peer.ss_family == AF_INET6, peer_port, listen_port, peer.ss_family,
                       &remote, &remote_len, &local, &local_len) &&
        !ask_origin(fd, listen_port, peer_port, &peer, &peer_len, &remote, &remote_len, &local,
                    &local_len))
        return;
    pthread_mutex_lock(&fd_lock);
    struct fdstate *mine = fd_ensure(fd);
    if (mine) {
        mine->redirected = 1;
        mine->relay = peer;
        mine->relay_len = peer_len;
        mine->remote = remote;
        mine->remote_len = remote_len;
        if (local_len) {
            mine->has_local = 1;
            mine->local = local;
            mine->local_len = local_len;
        }
    }
    pthread_mutex_unlock(&fd_lock);
    if (addr && addrlen) {
        *addrlen = room;
        copy_out_address(&remote, remote_len, addr, addrlen);
    }
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags) {
    real_init();
    socklen_t room = addrlen ? *addrlen : 0;
    int conn = real_accept4(fd, addr, addrlen, flags);
    if (conn >= 0 && relay_on())
        claim(fd, conn, addr, addrlen, room);
    return conn;
}

EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *addrlen) {
    real_init();
    socklen_t room = addrlen ? *addrlen : 0;
    int conn = real_accept(fd, addr, addrlen);
    if (conn >= 0 && relay_on())
        claim(fd, conn, addr, addrlen, room);
    return conn;
}

EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len) {
    real_init();
    if (!relay_on() || !addr || !len || relay_rules.incoming_mode == INCOMING_OFF)
        return real_getsockname(fd, addr, len);
    socklen_t room = *len;
    if (real_getsockname(fd, addr, len))
        return -1;
    if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)
        return 0;
    /* only a listening socket may be a listener of another process: ask about those */
    int accepting = 0;
    socklen_t alen = sizeof accepting;
    int ask = !fd_tracked(fd) && !getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &alen) &&
              accepting;
    struct fdstate st;
    if ((fd_tracked(fd) || ask) && listener(fd, &st, ask)) {
        /* the app sees the port it asked for, whichever it really got */
        if (addr->sa_family == AF_INET6 && room >= sizeof(struct sockaddr_in6))
            ((struct sockaddr_in6 *)addr)->sin6_port = htons((uint16_t)st.requested_port);
        else if (addr->sa_family == AF_INET && room >= sizeof(struct sockaddr_in))
            ((struct sockaddr_in *)addr)->sin_port = htons((uint16_t)st.requested_port);
        return 0;
    }
    if (!fd_tracked(fd))
        return 0;
    pthread_mutex_lock(&fd_lock);
    struct fdstate *live = fd_get(fd);
    int has_local = live && live->has_local;
    if (has_local) {
        st.local = live->local;
        st.local_len = live->local_len;
    }
    pthread_mutex_unlock(&fd_lock);
    if (has_local) {
        *len = room;
        copy_out_address(&st.local, st.local_len, addr, len);
    }
    return 0;
}
