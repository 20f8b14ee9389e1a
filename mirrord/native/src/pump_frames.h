/* The frames the native data plane (pump.c) reads and writes on a link: the connection
 * frames (Data, Eof, Close, Credit) it applies itself, the local commands the Python
 * side gives it over its socket pair (tags starting "pump_"), and everything else, which
 * it passes along unread. The same framing as mirrord/protocol/codec.py. Sans-I/O. */
#ifndef MIRRORD_PUMP_FRAMES_H
#define MIRRORD_PUMP_FRAMES_H

#include <stddef.h>
#include <stdint.h>

#include "mp.h"

#define PUMP_MAX_FRAME (1u << 20)
/* a Data frame's header as pump_data_header() writes it, whatever the payload's size */
#define PUMP_DATA_HEADER 36

/* a frame's payload length: the 4 big-endian bytes in front of it */
static inline uint32_t pump_frame_len(const uint8_t *at) {
    return (uint32_t)at[0] << 24 | (uint32_t)at[1] << 16 | (uint32_t)at[2] << 8 | at[3];
}

enum pump_kind {
    PK_OTHER = 0, /* not ours to read: passed along whole */
    PK_DATA,
    PK_EOF,
    PK_CLOSE,
    PK_CREDIT,
    PK_ATTACH, /* Python -> pump: run `conn` over socket `fd`, with `credit` to send */
    PK_REPLAY, /* Python -> pump: a connection frame that reached Python first */
    PK_SYNCED, /* Python -> pump: every frame of `conn` that reached Python was replayed */
    PK_RESET,  /* Python -> pump: give up on `conn` (the peer is told) */
    PK_LOCAL,  /* another "pump_" tag: never valid from a peer */
};

struct pump_frame {
    enum pump_kind kind;
    int64_t conn, amount, fd, credit;
    int reset;
    const uint8_t *data; /* Data's payload, or Replay's frame (length prefix included) */
    uint32_t len;
};

/* Reads one frame's payload (after the 4-byte length). A connection frame or command
 * whose fields are missing or mistyped is PK_OTHER: Python's decoder then judges it. */
void pump_parse(const uint8_t *payload, size_t n, struct pump_frame *out);

/* The frame of a Data message of `size` bytes up to its payload (PUMP_DATA_HEADER
 * bytes): the payload is then read straight behind it. */
void pump_data_header(uint8_t *at, uint64_t conn, uint32_t size);

/* The start of a Data frame's payload `payload` of which `avail` bytes are here, in the
 * field order both senders write (tag, conn, data): 1 with its connection, the offset of
 * the data's first byte and the data's size; 0 if too few bytes are here to tell; -1 if
 * it is not such a frame (pump_parse reads the whole frame then). */
int pump_data_prefix(const uint8_t *payload, size_t avail, int64_t *conn, size_t *offset,
                     uint32_t *size);

/* Whole frames (length prefix included) appended to `w`. */
void pump_frame_eof(struct mpw *w, int64_t conn);
void pump_frame_close(struct mpw *w, int64_t conn, int reset);
void pump_frame_credit(struct mpw *w, int64_t conn, int64_t amount);
void pump_frame_sync(struct mpw *w, int64_t conn);
void pump_frame_error(struct mpw *w, const char *message);

#endif
