#include "pump_frames.h"

#include <string.h>

static int key_is(const char *k, uint32_t n, const char *want) {
    return n == strlen(want) && memcmp(k, want, n) == 0;
}

static enum pump_kind kind_of(const char *tag, uint32_t n) {
    static const struct {
        const char *tag;
        enum pump_kind kind;
    } known[] = {
        {"data", PK_DATA},          {"eof", PK_EOF},
        {"close", PK_CLOSE},        {"credit", PK_CREDIT},
        {"pump_attach", PK_ATTACH}, {"pump_replay", PK_REPLAY},
        {"pump_synced", PK_SYNCED}, {"pump_reset", PK_RESET},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (key_is(tag, n, known[i].tag))
            return known[i].kind;
    if (n >= 5 && memcmp(tag, "pump_", 5) == 0)
        return PK_LOCAL;
    return PK_OTHER;
}

/* which fields each kind must have, as bits */
enum { HAS_CONN = 1, HAS_DATA = 2, HAS_RESET = 4, HAS_AMOUNT = 8, HAS_FD = 16, HAS_CREDIT = 32,
       HAS_FRAME = 64 };

static int needs(enum pump_kind kind) {
    switch (kind) {
    case PK_DATA: return HAS_CONN | HAS_DATA;
    case PK_EOF: return HAS_CONN;
    case PK_CLOSE: return HAS_CONN | HAS_RESET;
    case PK_CREDIT: return HAS_CONN | HAS_AMOUNT;
    case PK_ATTACH: return HAS_CONN | HAS_FD | HAS_CREDIT;
    case PK_REPLAY: return HAS_FRAME;
    case PK_SYNCED: return HAS_CONN;
    case PK_RESET: return HAS_CONN;
    default: return 0;
    }
}

/* An integer field; one above INT64_MAX (valid msgpack, no id the pump can hold) reads as -1,
 * which the checks below refuse, so the message's tag still decides what the frame is. */
static int int_field(struct mpr *r, int64_t *v) {
    struct mpr before = *r;
    if (mpr_int(r, v) == 0)
        return 0;
    *r = before;
    *v = -1;
    return mpr_skip(r);
}

void pump_parse(const uint8_t *payload, size_t n, struct pump_frame *out) {
    memset(out, 0, sizeof *out);
    struct mpr r;
    mpr_init(&r, payload, n);
    uint32_t pairs;
    if (mpr_map(&r, &pairs))
        return;
    enum pump_kind kind = PK_OTHER;
    int has = 0, tagged = 0;
    for (uint32_t i = 0; i < pairs; i++) {
        const char *key;
        uint32_t klen;
        if (mpr_str(&r, &key, &klen))
            return;
        if (key_is(key, klen, "t")) {
            const char *tag;
            uint32_t tlen;
            if (mpr_str(&r, &tag, &tlen))
                return;
            kind = kind_of(tag, tlen);
            tagged = 1;
        } else if (key_is(key, klen, "conn") && mpr_peek(&r) == MP_INT) {
            if (int_field(&r, &out->conn))
                return;
            has |= HAS_CONN;
        } else if (key_is(key, klen, "data") && mpr_peek(&r) == MP_BIN) {
            if (mpr_bin(&r, &out->data, &out->len))
                return;
            has |= HAS_DATA;
        } else if (key_is(key, klen, "frame") && mpr_peek(&r) == MP_BIN) {
            if (mpr_bin(&r, &out->data, &out->len))
                return;
            has |= HAS_FRAME;
        } else if (key_is(key, klen, "reset") && mpr_peek(&r) == MP_BOOL) {
            if (mpr_bool(&r, &out->reset))
                return;
            has |= HAS_RESET;
        } else if (key_is(key, klen, "amount") && mpr_peek(&r) == MP_INT) {
            if (int_field(&r, &out->amount))
                return;
            has |= HAS_AMOUNT;
        } else if (key_is(key, klen, "fd") && mpr_peek(&r) == MP_INT) {
            if (int_field(&r, &out->fd))
                return;
            has |= HAS_FD;
        } else if (key_is(key, klen, "credit") && mpr_peek(&r) == MP_INT) {
            if (int_field(&r, &out->credit))
                return;
            has |= HAS_CREDIT;
        } else {
            if (mpr_skip(&r))
                return;
            has |= 128; /* a field the message does not have */
        }
    }
    if (!tagged || r.p != r.end)
        return;
    if (kind == PK_LOCAL) {
        out->kind = PK_LOCAL;
        return;
    }
    int want = needs(kind);
    if (!want || has != want || out->conn < 0 || out->amount < 0 || out->fd < 0 || out->credit < 0)
        return; /* PK_OTHER */
    out->kind = kind;
}

int pump_data_prefix(const uint8_t *payload, size_t avail, int64_t *conn, size_t *offset,
                     uint32_t *size) {
    struct mpr r;
    mpr_init(&r, payload, avail);
    uint32_t pairs, n;
    const char *s;
    int unsure = avail < PUMP_DATA_HEADER - 4 ? 0 : -1; /* (a longer prefix is never valid) */
    if (mpr_map(&r, &pairs) || mpr_str(&r, &s, &n))
        return unsure;
    if (pairs != 3 || !key_is(s, n, "t"))
        return -1;
    if (mpr_str(&r, &s, &n))
        return unsure;
    if (!key_is(s, n, "data"))
        return -1;
    if (mpr_str(&r, &s, &n))
        return unsure;
    if (!key_is(s, n, "conn") || (mpr_peek(&r) != MP_INT && mpr_peek(&r) != MP_END))
        return -1;
    if (mpr_int(&r, conn))
        return unsure;
    if (*conn < 0)
        return -1;
    if (mpr_str(&r, &s, &n))
        return unsure;
    if (!key_is(s, n, "data"))
        return -1;
    if (mpr_peek(&r) != MP_BIN)
        return mpr_peek(&r) == MP_END ? unsure : -1;
    if (mpr_bin_head(&r, size))
        return unsure;
    *offset = (size_t)(r.p - payload);
    return 1;
}

static void put_be(uint8_t *at, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        at[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

void pump_data_header(uint8_t *at, uint64_t conn, uint32_t size) {
    /* {"t": "data", "conn": <uint64>, "data": <bin32>}: the shape Python's fast path reads */
    static const uint8_t keys[] = {0x83, 0xa1, 't', 0xa4, 'd', 'a', 't', 'a',
                                   0xa4, 'c',  'o', 'n',  'n'};
    put_be(at, (uint64_t)(PUMP_DATA_HEADER - 4) + size, 4);
    memcpy(at + 4, keys, sizeof keys);
    uint8_t *p = at + 4 + sizeof keys;
    p[0] = 0xcf;
    put_be(p + 1, conn, 8);
    memcpy(p + 9, "\xa4" "data", 5);
    p[14] = 0xc6;
    put_be(p + 15, size, 4);
}

static size_t begin(struct mpw *w, const char *tag, uint32_t fields) {
    size_t start = w->len;
    mpw_reserve(w, 4);
    mpw_map(w, fields + 1);
    mpw_cstr(w, "t");
    mpw_cstr(w, tag);
    return start;
}

static void end(struct mpw *w, size_t start) {
    if (!w->failed)
        put_be(w->buf + start, w->len - start - 4, 4);
}

/* a frame whose one field is the connection */
static void conn_frame(struct mpw *w, const char *tag, int64_t conn) {
    size_t at = begin(w, tag, 1);
    mpw_cstr(w, "conn");
    mpw_int(w, conn);
    end(w, at);
}

void pump_frame_eof(struct mpw *w, int64_t conn) { conn_frame(w, "eof", conn); }

void pump_frame_close(struct mpw *w, int64_t conn, int reset) {
    size_t at = begin(w, "close", 2);
    mpw_cstr(w, "conn");
    mpw_int(w, conn);
    mpw_cstr(w, "reset");
    mpw_bool(w, reset);
    end(w, at);
}

void pump_frame_credit(struct mpw *w, int64_t conn, int64_t amount) {
    size_t at = begin(w, "credit", 2);
    mpw_cstr(w, "conn");
    mpw_int(w, conn);
    mpw_cstr(w, "amount");
    mpw_int(w, amount);
    end(w, at);
}

void pump_frame_sync(struct mpw *w, int64_t conn) { conn_frame(w, "pump_sync", conn); }

void pump_frame_error(struct mpw *w, const char *message) {
    size_t at = begin(w, "pump_error", 1);
    mpw_cstr(w, "message");
    mpw_cstr(w, message);
    end(w, at);
}
