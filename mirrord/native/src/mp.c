#include "mp.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ writer */

void mpw_init(struct mpw *w, uint8_t *first, size_t cap) {
    w->buf = first;
    w->len = 0;
    w->cap = cap;
    w->heap = 0;
    w->failed = 0;
}

void mpw_free(struct mpw *w) {
    if (w->heap)
        free(w->buf);
    w->buf = NULL;
    w->heap = 0;
}

static uint8_t *room(struct mpw *w, size_t n) {
    if (w->failed)
        return NULL;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *grown = malloc(cap);
        if (!grown) {
            w->failed = 1;
            return NULL;
        }
        if (w->len)
            memcpy(grown, w->buf, w->len);
        if (w->heap)
            free(w->buf);
        w->buf = grown;
        w->cap = cap;
        w->heap = 1;
    }
    uint8_t *at = w->buf + w->len;
    w->len += n;
    return at;
}

uint8_t *mpw_reserve(struct mpw *w, size_t n) { return room(w, n); }

static void put_be(uint8_t *at, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        at[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static void head(struct mpw *w, uint32_t n, uint8_t fix, uint32_t fixmax, uint8_t b8, uint8_t b16,
                 uint8_t b32) {
    uint8_t *at;
    if (n <= fixmax) {
        if ((at = room(w, 1)))
            at[0] = (uint8_t)(fix | n);
    } else if (b8 && n <= 0xff) {
        if ((at = room(w, 2))) {
            at[0] = b8;
            at[1] = (uint8_t)n;
        }
    } else if (n <= 0xffff) {
        if ((at = room(w, 3))) {
            at[0] = b16;
            put_be(at + 1, n, 2);
        }
    } else if ((at = room(w, 5))) {
        at[0] = b32;
        put_be(at + 1, n, 4);
    }
}

void mpw_map(struct mpw *w, uint32_t n) { head(w, n, 0x80, 15, 0, 0xde, 0xdf); }
void mpw_array(struct mpw *w, uint32_t n) { head(w, n, 0x90, 15, 0, 0xdc, 0xdd); }

void mpw_str(struct mpw *w, const char *s, size_t n) {
    if (n > 0xffffffffu) {
        w->failed = 1;
        return;
    }
    head(w, (uint32_t)n, 0xa0, 31, 0xd9, 0xda, 0xdb);
    uint8_t *at = room(w, n);
    if (at && n)
        memcpy(at, s, n);
}

void mpw_cstr(struct mpw *w, const char *s) { mpw_str(w, s, strlen(s)); }

void mpw_int(struct mpw *w, int64_t v) {
    uint8_t *at;
    if (v >= 0 && v <= 0x7f) {
        if ((at = room(w, 1)))
            at[0] = (uint8_t)v;
    } else if (v < 0 && v >= -32) {
        if ((at = room(w, 1)))
            at[0] = (uint8_t)(0xe0 | (v + 32));
    } else if ((at = room(w, 9))) {
        at[0] = 0xd3; /* int64: one form is enough, the peer accepts them all */
        put_be(at + 1, (uint64_t)v, 8);
    }
}

void mpw_bool(struct mpw *w, int v) {
    uint8_t *at = room(w, 1);
    if (at)
        at[0] = v ? 0xc3 : 0xc2;
}

void mpw_nil(struct mpw *w) {
    uint8_t *at = room(w, 1);
    if (at)
        at[0] = 0xc0;
}

/* ------------------------------------------------------------------ reader */

void mpr_init(struct mpr *r, const uint8_t *p, size_t n) {
    r->p = p;
    r->end = p + n;
    r->failed = 0;
}

static int fail(struct mpr *r) {
    r->failed = 1;
    return -1;
}

static int take(struct mpr *r, size_t n, const uint8_t **at) {
    if (r->failed || (size_t)(r->end - r->p) < n)
        return fail(r);
    *at = r->p;
    r->p += n;
    return 0;
}

static uint64_t get_be(const uint8_t *at, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | at[i];
    return v;
}

enum mp_kind mpr_peek(struct mpr *r) {
    if (r->failed || r->p >= r->end)
        return MP_END;
    uint8_t b = *r->p;
    if (b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3))
        return MP_INT;
    if ((b & 0xf0) == 0x80 || b == 0xde || b == 0xdf)
        return MP_MAP;
    if ((b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd)
        return MP_ARRAY;
    if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb))
        return MP_STR;
    if (b >= 0xc4 && b <= 0xc6)
        return MP_BIN;
    if (b == 0xc0)
        return MP_NIL;
    if (b == 0xc2 || b == 0xc3)
        return MP_BOOL;
    return MP_OTHER;
}

/* a length that follows a marker byte: 1, 2 or 4 bytes */
static int length(struct mpr *r, int bytes, uint32_t *n) {
    const uint8_t *at;
    if (take(r, (size_t)bytes, &at))
        return -1;
    *n = (uint32_t)get_be(at, bytes);
    return 0;
}

static int container(struct mpr *r, uint8_t fix, uint8_t b16, uint8_t b32, uint32_t *n) {
    const uint8_t *at;
    if (take(r, 1, &at))
        return -1;
    uint8_t b = at[0];
    if ((b & 0xf0) == fix) {
        *n = b & 0x0f;
        return 0;
    }
    if (b == b16)
        return length(r, 2, n);
    if (b == b32)
        return length(r, 4, n);
    return fail(r);
}

int mpr_map(struct mpr *r, uint32_t *n) { return container(r, 0x80, 0xde, 0xdf, n); }
int mpr_array(struct mpr *r, uint32_t *n) { return container(r, 0x90, 0xdc, 0xdd, n); }

static int bytes_of(struct mpr *r, uint32_t n, const char **s) {
    const uint8_t *at;
    if (take(r, n, &at))
        return -1;
    *s = (const char *)at;
    return 0;
}

int mpr_str(struct mpr *r, const char **s, uint32_t *n) {
    const uint8_t *at;
    if (take(r, 1, &at))
        return -1;
    uint8_t b = at[0];
    if ((b & 0xe0) == 0xa0)
        *n = b & 0x1f;
    else if (b == 0xd9 || b == 0xda || b == 0xdb) {
        if (length(r, b == 0xd9 ? 1 : b == 0xda ? 2 : 4, n))
            return -1;
    } else
        return fail(r);
    return bytes_of(r, *n, s);
}

int mpr_int(struct mpr *r, int64_t *v) {
    const uint8_t *at;
    if (take(r, 1, &at))
        return -1;
    uint8_t b = at[0];
    if (b <= 0x7f) {
        *v = b;
        return 0;
    }
    if (b >= 0xe0) {
        *v = (int64_t)b - 256;
        return 0;
    }
    static const int widths[] = {1, 2, 4, 8, 1, 2, 4, 8}; /* 0xcc..0xd3 */
    if (b < 0xcc || b > 0xd3)
        return fail(r);
    int width = widths[b - 0xcc];
    if (take(r, (size_t)width, &at))
        return -1;
    uint64_t raw = get_be(at, width);
    if (b <= 0xcf) { /* unsigned */
        if (raw > (uint64_t)INT64_MAX)
            return fail(r);
        *v = (int64_t)raw;
    } else { /* signed: sign-extend from its width */
        int shift = 64 - 8 * width;
        *v = (int64_t)(raw << shift) >> shift;
    }
    return 0;
}

int mpr_bool(struct mpr *r, int *v) {
    const uint8_t *at;
    if (take(r, 1, &at))
        return -1;
    if (at[0] != 0xc2 && at[0] != 0xc3)
        return fail(r);
    *v = at[0] == 0xc3;
    return 0;
}

int mpr_nil(struct mpr *r) {
    const uint8_t *at;
    if (take(r, 1, &at))
        return -1;
    return at[0] == 0xc0 ? 0 : fail(r);
}

#define MAX_DEPTH 16

static int skip(struct mpr *r, int depth) {
    const uint8_t *at;
    uint32_t n;
    const char *s;
    int b;
    if (depth > MAX_DEPTH)
        return fail(r);
    switch (mpr_peek(r)) {
    case MP_NIL:
        return mpr_nil(r);
    case MP_BOOL:
        return mpr_bool(r, &b);
    case MP_INT: /* any width and value, even one above INT64_MAX that mpr_int refuses */
        if (take(r, 1, &at))
            return -1;
        if (at[0] >= 0xcc && at[0] <= 0xd3)
            return take(r, (size_t)1 << ((at[0] - 0xcc) & 3), &at);
        return 0;
    case MP_STR:
        return mpr_str(r, &s, &n);
    case MP_BIN:
        if (mpr_bin_head(r, &n))
            return -1;
        return bytes_of(r, n, &s);
    case MP_ARRAY:
        if (mpr_array(r, &n))
            return -1;
        while (n--)
            if (skip(r, depth + 1))
                return -1;
        return 0;
    case MP_MAP:
        if (mpr_map(r, &n))
            return -1;
        while (n--)
            if (skip(r, depth + 1) || skip(r, depth + 1))
                return -1;
        return 0;
    default: /* floats, extensions: nothing the intproxy sends a layer */
        return fail(r);
    }
}

int mpr_skip(struct mpr *r) { return skip(r, 0); }

int mpr_bin_head(struct mpr *r, uint32_t *n) {
    const uint8_t *at;
    if (take(r, 1, &at))
        return -1;
    uint8_t b = at[0];
    if (b < 0xc4 || b > 0xc6)
        return fail(r);
    return length(r, b == 0xc4 ? 1 : b == 0xc5 ? 2 : 4, n);
}

int mpr_bin(struct mpr *r, const uint8_t **s, uint32_t *n) {
    if (mpr_bin_head(r, n))
        return -1;
    return take(r, *n, s);
}
