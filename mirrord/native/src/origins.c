/* The intproxy's origin table (see mirrord/protocol/origins.py): who is behind each
 * connection it opens into the app, written before it connects, so that accept() reads
 * it here instead of asking the intproxy on every connection. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "real.h"
#include "relay.h"

/* the layout of origins._SLOT: "<HBBB3x16s16sHH4x" */
#define SLOT_SIZE 48
#define PORTS 65536
#define TABLE_SIZE ((size_t)2 * PORTS * SLOT_SIZE)
#define WRITTEN 1
#define ASK 2

static const uint8_t *table;
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void map_table(void) {
    char path[4096];
    if (!relay_socket_path ||
        snprintf(path, sizeof path, "%s.origins", relay_socket_path) >= (int)sizeof path)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* an intproxy without one: every accept() asks */
    void *mapped = mmap(NULL, TABLE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    real_close(fd);
    if (mapped != MAP_FAILED)
        table = mapped;
}

static int host_of(uint8_t family, const uint8_t *packed, char *out, socklen_t room) {
    if (family == 4)
        return inet_ntop(AF_INET, packed, out, room) ? 0 : -1;
    if (family == 6)
        return inet_ntop(AF_INET6, packed, out, room) ? 0 : -1;
    return -1;
}

int origin_lookup(int ipv6, int port, int app_port, int family, struct sockaddr_storage *remote,
                  socklen_t *remote_len, struct sockaddr_storage *local, socklen_t *local_len) {
    pthread_once(&table_once, map_table);
    if (!table || port < 0 || port >= PORTS)
        return 0;
    const uint8_t *slot = table + ((size_t)(ipv6 ? PORTS : 0) + (size_t)port) * SLOT_SIZE;
    uint8_t flags = slot[2];
    if (!(flags & WRITTEN) || (flags & ASK) || (slot[0] | slot[1] << 8) != app_port)
        return 0;
    char rhost[INET6_ADDRSTRLEN], lhost[INET6_ADDRSTRLEN];
    if (host_of(slot[3], slot + 8, rhost, sizeof rhost) ||
        host_of(slot[4], slot + 24, lhost, sizeof lhost))
        return 0;
    *remote_len = shaped_address(family, rhost, slot[40] | slot[41] << 8, remote);
    *local_len = shaped_address(family, lhost, slot[42] | slot[43] << 8, local);
    return *remote_len != 0;
}
