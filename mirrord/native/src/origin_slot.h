/* A slot of the intproxy's origin table (mirrord/protocol/origins.py): its layout and
 * its decoding. Sans-I/O, so the check driver can compare it with the Python side's. */
#ifndef MIRRORD_ORIGIN_SLOT_H
#define MIRRORD_ORIGIN_SLOT_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

/* origins._SLOT: "<HBBB3x16s16sHH4x" */
#define ORIGIN_SLOT_SIZE 48
#define ORIGIN_PORTS 65536
#define ORIGIN_TABLE_SIZE ((size_t)2 * ORIGIN_PORTS * ORIGIN_SLOT_SIZE)

struct origin {
    char remote_host[INET6_ADDRSTRLEN], local_host[INET6_ADDRSTRLEN];
    int remote_port, local_port;
    int ask; /* the intproxy holds a stolen socket for this connection: ask for it */
};

/* Where the slot of the intproxy's local `port` (IPv6 or not) starts in the table. */
size_t origin_offset(int ipv6, int port);
/* 1 and `out` if the slot was written for the app's `app_port`, else 0. */
int origin_decode(const uint8_t *slot, int app_port, struct origin *out);

#endif
