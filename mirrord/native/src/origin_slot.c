#include "origin_slot.h"

#include <arpa/inet.h>

#define WRITTEN 1
#define ASK 2

size_t origin_offset(int ipv6, int port) {
    return ((size_t)(ipv6 ? ORIGIN_PORTS : 0) + (size_t)port) * ORIGIN_SLOT_SIZE;
}

static int host_of(uint8_t family, const uint8_t *packed, char *out) {
    int kind = family == 4 ? AF_INET : family == 6 ? AF_INET6 : -1;
    return kind < 0 || !inet_ntop(kind, packed, out, INET6_ADDRSTRLEN) ? -1 : 0;
}

int origin_decode(const uint8_t *slot, int app_port, struct origin *out) {
    uint8_t flags = slot[2];
    if (!(flags & WRITTEN) || (slot[0] | slot[1] << 8) != app_port)
        return 0;
    if (host_of(slot[3], slot + 8, out->remote_host) || host_of(slot[4], slot + 24, out->local_host))
        return 0; /* not a slot the intproxy wrote whole */
    out->remote_port = slot[40] | slot[41] << 8;
    out->local_port = slot[42] | slot[43] << 8;
    out->ask = (flags & ASK) != 0;
    return 1;
}
