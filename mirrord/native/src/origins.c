/* The intproxy's origin table, mapped: who is behind each connection it opens into the
 * app, written before it connects, so that accept() reads it here instead of asking the
 * intproxy on every connection (the slot's layout: origin_slot.c). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>

#include "origin_slot.h"
#include "real.h"
#include "relay.h"

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
    void *mapped = mmap(NULL, ORIGIN_TABLE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    real_close(fd);
    if (mapped != MAP_FAILED)
        table = mapped;
}

int origin_lookup(int ipv6, int port, int app_port, int family, struct sockaddr_storage *remote,
                  socklen_t *remote_len, struct sockaddr_storage *local, socklen_t *local_len) {
    struct origin found;
    pthread_once(&table_once, map_table);
    if (!table || port < 0 || port >= ORIGIN_PORTS ||
        !origin_decode(table + origin_offset(ipv6, port), app_port, &found) || found.ask)
        return 0;
    *remote_len = shaped_address(family, found.remote_host, found.remote_port, remote);
    *local_len = shaped_address(family, found.local_host, found.local_port, local);
    return *remote_len != 0;
}
