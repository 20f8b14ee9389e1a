#include "frames.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ requests */

/* A frame starts with its length, known once the body is written: reserve it. */
static size_t begin(struct mpw *w) {
    size_t at = w->len;
    mpw_reserve(w, 4);
    return at;
}

static void end(struct mpw *w, size_t at) {
    if (w->failed)
        return;
    size_t n = w->len - at - 4;
    w->buf[at] = (uint8_t)(n >> 24);
    w->buf[at + 1] = (uint8_t)(n >> 16);
    w->buf[at + 2] = (uint8_t)(n >> 8);
    w->buf[at + 3] = (uint8_t)n;
}

static void tag(struct mpw *w, uint32_t fields, const char *t) {
    mpw_map(w, fields + 1);
    mpw_cstr(w, "t");
    mpw_cstr(w, t);
}

static void kv_str(struct mpw *w, const char *k, const char *v) {
    mpw_cstr(w, k);
    mpw_cstr(w, v);
}

static void kv_int(struct mpw *w, const char *k, int64_t v) {
    mpw_cstr(w, k);
    mpw_int(w, v);
}

static void kv_bool(struct mpw *w, const char *k, int v) {
    mpw_cstr(w, k);
    mpw_bool(w, v);
}

void frame_hello(struct mpw *w, const char *token, const char *client) {
    size_t at = begin(w);
    tag(w, 3, "hello");
    kv_int(w, "version", PROTOCOL_VERSION);
    kv_str(w, "token", token);
    kv_str(w, "client", client);
    end(w, at);
}

void frame_connect(struct mpw *w, int64_t req, const char *proto, const char *host, int64_t port,
                   int want_fd, int nonblocking) {
    size_t at = begin(w);
    tag(w, 6, "connect");
    kv_int(w, "req", req);
    kv_str(w, "proto", proto);
    kv_str(w, "host", host);
    kv_int(w, "port", port);
    kv_bool(w, "want_fd", want_fd);
    kv_bool(w, "nonblocking", nonblocking);
    end(w, at);
}

static int decimal(const char *s, int64_t *v) {
    if (!*s || strlen(s) > 9)
        return 0;
    int64_t n = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        n = n * 10 + (*s - '0');
    }
    *v = n;
    return 1;
}

void frame_resolve(struct mpw *w, int64_t req, const char *host, const char *service,
                   int64_t family, int64_t type, int64_t proto, int64_t flags) {
    size_t at = begin(w);
    int64_t port;
    tag(w, 7, "resolve");
    kv_int(w, "req", req);
    kv_str(w, "host", host);
    mpw_cstr(w, "port");
    if (!service)
        mpw_nil(w);
    else if (decimal(service, &port))
        mpw_int(w, port);
    else
        mpw_cstr(w, service);
    kv_int(w, "family", family);
    kv_int(w, "type", type);
    kv_int(w, "proto", proto);
    kv_int(w, "flags", flags);
    end(w, at);
}

void frame_subscribe(struct mpw *w, int64_t req, int64_t port, const char *mode,
                     const char *http_filter, const char *local_host, int64_t local_port,
                     int want_fd, int64_t listener) {
    size_t at = begin(w);
    tag(w, 8, "subscribe");
    kv_int(w, "req", req);
    kv_int(w, "port", port);
    kv_str(w, "mode", mode);
    kv_str(w, "http_filter", http_filter);
    kv_str(w, "local_host", local_host);
    kv_int(w, "local_port", local_port);
    kv_bool(w, "want_fd", want_fd);
    kv_int(w, "listener", listener);
    end(w, at);
}

void frame_register_listener(struct mpw *w, int64_t req, int64_t listener, int64_t requested_port,
                             int64_t remote_port) {
    size_t at = begin(w);
    tag(w, 4, "register_listener");
    kv_int(w, "req", req);
    kv_int(w, "listener", listener);
    kv_int(w, "requested_port", requested_port);
    kv_int(w, "remote_port", remote_port);
    end(w, at);
}

void frame_listener_info(struct mpw *w, int64_t req, int64_t listener) {
    size_t at = begin(w);
    tag(w, 2, "listener_info");
    kv_int(w, "req", req);
    kv_int(w, "listener", listener);
    end(w, at);
}

void frame_listener_closed(struct mpw *w, int64_t listener) {
    size_t at = begin(w);
    tag(w, 1, "listener_closed");
    kv_int(w, "listener", listener);
    end(w, at);
}

void frame_conn_info(struct mpw *w, int64_t req, int64_t listen_port, int64_t peer_port) {
    size_t at = begin(w);
    tag(w, 3, "conn_info");
    kv_int(w, "req", req);
    kv_int(w, "listen_port", listen_port);
    kv_int(w, "peer_port", peer_port);
    end(w, at);
}

/* ------------------------------------------------------------------ replies */

/* Which fields a tag needs; a reply missing one (or with a wrong type) is refused. */
enum field {
    F_REQ = 1 << 0,
    F_VERSION = 1 << 1,
    F_CONN = 1 << 2,
    F_LOCAL_HOST = 1 << 3,
    F_LOCAL_PORT = 1 << 4,
    F_REMOTE_HOST = 1 << 5,
    F_REMOTE_PORT = 1 << 6,
    F_KIND = 1 << 7,
    F_ERRNO = 1 << 8,
    F_MESSAGE = 1 << 9,
    F_CODE = 1 << 10,
    F_HAS_FD = 1 << 11,
    F_ADDRS = 1 << 12,
    F_PORT = 1 << 13,
    F_KNOWN = 1 << 14,
    F_REQUESTED_PORT = 1 << 15,
    F_SUBSCRIBED = 1 << 16,
};

#define ADDRESSES (F_LOCAL_HOST | F_LOCAL_PORT | F_REMOTE_HOST | F_REMOTE_PORT)

static const struct {
    const char *tag;
    enum reply_type type;
    unsigned needs;
} TAGS[] = {
    {"hello_ok", R_HELLO_OK, F_VERSION},
    {"error", R_ERROR, F_CODE | F_MESSAGE},
    {"connected", R_CONNECTED, F_REQ | F_CONN | ADDRESSES},
    {"connected_fd", R_CONNECTED_FD, F_REQ | ADDRESSES},
    {"failed", R_FAILED, F_REQ | F_KIND | F_ERRNO | F_MESSAGE},
    {"resolved", R_RESOLVED, F_REQ | F_ADDRS},
    {"subscribed", R_SUBSCRIBED, F_REQ | F_PORT},
    {"conn_info_reply", R_CONN_INFO_REPLY, F_REQ | ADDRESSES | F_HAS_FD},
    {"listener_info_reply", R_LISTENER_INFO_REPLY,
     F_REQ | F_KNOWN | F_REQUESTED_PORT | F_REMOTE_PORT | F_SUBSCRIBED},
};

static int is(const char *s, uint32_t n, const char *word) {
    return strlen(word) == n && memcmp(s, word, n) == 0;
}

static int refuse(char *why, size_t whylen, const char *reason, const char *detail) {
    if (why && whylen)
        snprintf(why, whylen, "%s%s%s", reason, detail ? ": " : "", detail ? detail : "");
    return -1;
}

/* A string into a fixed buffer: NUL-free and short enough, or -1 (`cut`: truncate instead). */
static int copy_str(struct mpr *r, char *dst, size_t cap, int cut) {
    const char *s;
    uint32_t n;
    if (mpr_str(r, &s, &n))
        return -1;
    if (memchr(s, 0, n))
        return -1;
    if (n >= cap) {
        if (!cut)
            return -1;
        n = (uint32_t)(cap - 1);
    }
    memcpy(dst, s, n);
    dst[n] = 0;
    return 0;
}

static int read_port(struct mpr *r, int64_t *v) {
    if (mpr_int(r, v))
        return -1;
    return *v < 0 || *v > 65535 ? -1 : 0;
}

/* Resolved.addrs: [[family, type, proto, canonname, address, port], ...] */
static int read_addrs(struct mpr *r, struct reply *out) {
    uint32_t n, fields;
    if (mpr_array(r, &n))
        return -1;
    if (n > 1024 || n > (uint32_t)(r->end - r->p)) /* each item takes bytes: no huge malloc */
        return -1;
    free(out->addrs);
    out->addrs = calloc(n ? n : 1, sizeof *out->addrs);
    out->naddrs = 0;
    if (!out->addrs)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        struct resolved_addr *a = &out->addrs[i];
        if (mpr_array(r, &fields) || fields != 6)
            return -1;
        if (mpr_int(r, &a->family) || mpr_int(r, &a->type) || mpr_int(r, &a->proto) ||
            copy_str(r, a->canon, sizeof a->canon, 0) ||
            copy_str(r, a->address, sizeof a->address, 0) || read_port(r, &a->port))
            return -1;
        out->naddrs = i + 1;
    }
    return 0;
}

static int read_field(struct mpr *r, const char *k, uint32_t kn, struct reply *out,
                      unsigned *seen) {
    unsigned bit = 0;
    int rc = 0;
    if (is(k, kn, "req")) {
        bit = F_REQ;
        rc = mpr_int(r, &out->req);
    } else if (is(k, kn, "version")) {
        bit = F_VERSION;
        rc = mpr_int(r, &out->version);
    } else if (is(k, kn, "conn")) {
        bit = F_CONN;
        rc = mpr_int(r, &out->conn);
    } else if (is(k, kn, "port")) {
        bit = F_PORT;
        rc = read_port(r, &out->port);
    } else if (is(k, kn, "local_host")) {
        bit = F_LOCAL_HOST;
        rc = copy_str(r, out->local_host, sizeof out->local_host, 0);
    } else if (is(k, kn, "local_port")) {
        bit = F_LOCAL_PORT;
        rc = read_port(r, &out->local_port);
    } else if (is(k, kn, "remote_host")) {
        bit = F_REMOTE_HOST;
        rc = copy_str(r, out->remote_host, sizeof out->remote_host, 0);
    } else if (is(k, kn, "remote_port")) {
        bit = F_REMOTE_PORT;
        rc = read_port(r, &out->remote_port);
    } else if (is(k, kn, "kind")) {
        bit = F_KIND;
        rc = copy_str(r, out->kind, sizeof out->kind, 0);
    } else if (is(k, kn, "errno")) {
        bit = F_ERRNO;
        rc = mpr_int(r, &out->err);
    } else if (is(k, kn, "message")) {
        bit = F_MESSAGE;
        rc = copy_str(r, out->message, sizeof out->message, 1);
    } else if (is(k, kn, "code")) {
        bit = F_CODE;
        rc = copy_str(r, out->code, sizeof out->code, 1);
    } else if (is(k, kn, "has_fd")) {
        bit = F_HAS_FD;
        rc = mpr_bool(r, &out->has_fd);
    } else if (is(k, kn, "known")) {
        bit = F_KNOWN;
        rc = mpr_bool(r, &out->known);
    } else if (is(k, kn, "subscribed")) {
        bit = F_SUBSCRIBED;
        rc = mpr_bool(r, &out->subscribed);
    } else if (is(k, kn, "requested_port")) {
        bit = F_REQUESTED_PORT;
        rc = read_port(r, &out->requested_port);
    } else if (is(k, kn, "addrs")) {
        bit = F_ADDRS;
        rc = read_addrs(r, out);
    } else {
        rc = mpr_skip(r); /* a field this side does not use */
    }
    if (rc)
        return -1;
    if (*seen & bit)
        return -1; /* the same field twice */
    *seen |= bit;
    return 0;
}

int reply_decode(const uint8_t *payload, size_t n, struct reply *out, char *why, size_t whylen) {
    struct mpr r;
    uint32_t fields;
    const char *t = NULL, *k;
    uint32_t tn = 0, kn;
    unsigned seen = 0;
    memset(out, 0, sizeof *out);
    out->req = -1;
    mpr_init(&r, payload, n);
    if (mpr_map(&r, &fields))
        return refuse(why, whylen, "frame is not a map", NULL);
    /* the tag may come anywhere: find it first, then read the fields it needs */
    for (uint32_t i = 0; i < fields; i++) {
        if (mpr_str(&r, &k, &kn))
            return refuse(why, whylen, "a field name is not a string", NULL);
        if (is(k, kn, "t")) {
            if (t)
                return refuse(why, whylen, "two tags", NULL);
            if (mpr_str(&r, &t, &tn))
                return refuse(why, whylen, "the tag is not a string", NULL);
        } else if (mpr_skip(&r)) {
            return refuse(why, whylen, "undecodable frame", NULL);
        }
    }
    if (r.p != r.end)
        return refuse(why, whylen, "bytes after the message", NULL);
    if (!t)
        return refuse(why, whylen, "frame has no tag", NULL);
    unsigned needs = 0;
    out->type = R_UNKNOWN;
    for (size_t i = 0; i < sizeof TAGS / sizeof TAGS[0]; i++)
        if (is(t, tn, TAGS[i].tag)) {
            out->type = TAGS[i].type;
            needs = TAGS[i].needs;
        }
    if (out->type == R_UNKNOWN)
        return 0;
    mpr_init(&r, payload, n);
    mpr_map(&r, &fields);
    for (uint32_t i = 0; i < fields; i++) {
        mpr_str(&r, &k, &kn);
        if (is(k, kn, "t")) {
            mpr_skip(&r);
            continue;
        }
        if (read_field(&r, k, kn, out, &seen)) {
            char name[40];
            snprintf(name, sizeof name, "%.*s", (int)(kn < 32 ? kn : 32), k);
            reply_free(out);
            return refuse(why, whylen, "bad field", name);
        }
    }
    if ((seen & needs) != needs) {
        reply_free(out);
        return refuse(why, whylen, "missing fields", NULL);
    }
    if (!(needs & F_REQ))
        out->req = -1;
    return 0;
}

void reply_free(struct reply *r) {
    free(r->addrs);
    r->addrs = NULL;
    r->naddrs = 0;
}

int reply_carries_fd(const struct reply *r) {
    return r->type == R_CONNECTED_FD || (r->type == R_CONN_INFO_REPLY && r->has_fd);
}
