/* A minimal msgpack writer and a bounds-checked reader: the subset of the format the
 * intproxy's frames use (maps, arrays, strings, binaries, integers, booleans, nil).
 * Sans-I/O: buffers in, buffers out; no allocation in the reader. */
#ifndef MIRRORD_MP_H
#define MIRRORD_MP_H

#include <stddef.h>
#include <stdint.h>

struct mpw {
    uint8_t *buf;
    size_t len, cap;
    int heap;   /* buf was malloc()ed here (the first one is the caller's) */
    int failed; /* out of memory: the frame is not sent */
};

void mpw_init(struct mpw *w, uint8_t *first, size_t cap);
void mpw_free(struct mpw *w);
/* n raw bytes at the end, to fill in later (NULL when out of memory) */
uint8_t *mpw_reserve(struct mpw *w, size_t n);
void mpw_map(struct mpw *w, uint32_t n);
void mpw_array(struct mpw *w, uint32_t n);
void mpw_str(struct mpw *w, const char *s, size_t n);
void mpw_cstr(struct mpw *w, const char *s);
void mpw_int(struct mpw *w, int64_t v);
void mpw_bool(struct mpw *w, int v);
void mpw_nil(struct mpw *w);

enum mp_kind { MP_NIL, MP_BOOL, MP_INT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_OTHER, MP_END };

struct mpr {
    const uint8_t *p, *end;
    int failed; /* malformed or truncated input: every later read fails too */
};

void mpr_init(struct mpr *r, const uint8_t *p, size_t n);
enum mp_kind mpr_peek(struct mpr *r);
int mpr_map(struct mpr *r, uint32_t *n);
int mpr_array(struct mpr *r, uint32_t *n);
int mpr_str(struct mpr *r, const char **s, uint32_t *n);
int mpr_bin(struct mpr *r, const uint8_t **s, uint32_t *n);
/* a bin's marker and length, not its bytes (they may not be here yet) */
int mpr_bin_head(struct mpr *r, uint32_t *n);
int mpr_int(struct mpr *r, int64_t *v);
int mpr_bool(struct mpr *r, int *v);
int mpr_nil(struct mpr *r);
int mpr_skip(struct mpr *r);

#endif
