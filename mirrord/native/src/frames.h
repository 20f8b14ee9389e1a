/* The intproxy's layer protocol, the C side: requests encoded as frames, replies decoded
 * from a frame's payload into one flat struct. The same frames as mirrord/protocol/
 * (a 4-byte big-endian length, then a msgpack map {"t": tag, field: value...}).
 * Sans-I/O: no sockets here, so the decoder can be fuzzed alone. */
#ifndef MIRRORD_FRAMES_H
#define MIRRORD_FRAMES_H

#include <stddef.h>
#include <stdint.h>

#include "mp.h"

#define PROTOCOL_VERSION 1
#define MAX_FRAME (1u << 20)
#define HOST_MAX 64   /* an IP address as text, with room to spare */
#define NAME_MAX_ 256 /* a DNS name */

enum reply_type {
    R_UNKNOWN = 0, /* a well-formed frame of a tag a layer does not wait for */
    R_HELLO_OK,
    R_ERROR,
    R_CONNECTED,
    R_CONNECTED_FD,
    R_FAILED,
    R_RESOLVED,
    R_SUBSCRIBED,
    R_CONN_INFO_REPLY,
    R_LISTENER_INFO_REPLY,
};

struct resolved_addr {
    int64_t family, type, proto, port;
    char canon[NAME_MAX_];
    char address[HOST_MAX];
};

struct reply {
    enum reply_type type;
    int64_t req; /* -1 when the tag has none */
    int64_t version, conn, port;
    char local_host[HOST_MAX];
    int64_t local_port;
    char remote_host[HOST_MAX];
    int64_t remote_port;
    char kind[8]; /* RequestFailed: "os" or "gai" */
    int64_t err;
    char message[256]; /* RequestFailed / Error text, cut to fit */
    char code[32];
    int has_fd;
    int known, subscribed; /* ListenerInfoReply */
    int64_t requested_port;
    struct resolved_addr *addrs; /* Resolved: malloc()ed, reply_free() releases */
    uint32_t naddrs;
};

/* 0 and a filled `out`, or -1 and a one-line reason in `why`. */
int reply_decode(const uint8_t *payload, size_t n, struct reply *out, char *why, size_t whylen);
void reply_free(struct reply *r);
/* Does this reply bring a descriptor along (SCM_RIGHTS)? */
int reply_carries_fd(const struct reply *r);

/* Requests: each appends one whole frame (length prefix included) to `w`. */
void frame_hello(struct mpw *w, const char *token, const char *client);
void frame_connect(struct mpw *w, int64_t req, const char *proto, const char *host, int64_t port,
                   int want_fd, int nonblocking);
/* `service`: NULL for no port, a decimal string is sent as a number, else as a name. */
void frame_resolve(struct mpw *w, int64_t req, const char *host, const char *service,
                   int64_t family, int64_t type, int64_t proto, int64_t flags);
void frame_subscribe(struct mpw *w, int64_t req, int64_t port, const char *mode,
                     const char *http_filter, const char *local_host, int64_t local_port,
                     int want_fd, int64_t listener);
/* listeners are known to the intproxy by their socket's inode, in every process */
void frame_register_listener(struct mpw *w, int64_t req, int64_t listener, int64_t requested_port,
                             int64_t remote_port);
void frame_listener_info(struct mpw *w, int64_t req, int64_t listener);
void frame_listener_closed(struct mpw *w, int64_t listener);
void frame_conn_info(struct mpw *w, int64_t req, int64_t listen_port, int64_t peer_port);

#endif
