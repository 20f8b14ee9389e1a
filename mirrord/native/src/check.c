/* The check driver: the relay's sans-I/O cores behind stdin/stdout, so the Python tests
 * can fuzz the frame decoder and compare every decision with the Python side's.
 *
 *   relay_check frames          stdin: [u32 big-endian length][payload]...; one line each
 *   relay_check rules TABLE     stdin: one query a line (see `query` below)
 *   relay_check encode          stdin: one request a line; stdout: its frame in hex
 *   relay_check origins TABLE   stdin: "IPV6 PORT APP_PORT" a line; stdout: the slot decoded
 *   relay_check pump            stdin: frames as for `frames`; stdout: how the pump reads each
 *   relay_check pump_encode     stdin: "data CONN SIZE" | "eof CONN" | "close CONN RESET" |
 *                               "credit CONN AMOUNT" | "sync CONN" | "error TEXT"; stdout: hex
 *
 * Built with -DFUZZER it is a libFuzzer target instead (LLVMFuzzerTestOneInput). */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frames.h"
#include "origin_slot.h"
#include "pump_frames.h"
#include "rules.h"

static const char *TYPES[] = {"unknown", "hello_ok", "error", "connected", "connected_fd",
                              "failed", "resolved", "subscribed", "conn_info_reply",
                              "listener_info_reply"};

/* a decoded string, printable: one output line per input whatever it holds */
static const char *esc(const char *s) {
    static char buf[4][1024];
    static int which;
    char *out = buf[which = (which + 1) % 4], *at = out;
    for (; *s && at < out + sizeof buf[0] - 5; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c < 0x7f && c != '\\')
            *at++ = (char)c;
        else
            at += sprintf(at, "\\x%02x", c);
    }
    *at = 0;
    return out;
}

static void describe(const uint8_t *data, size_t n, FILE *out) {
    struct reply r;
    char why[128];
    if (reply_decode(data, n, &r, why, sizeof why)) {
        if (out)
            fprintf(out, "err %s\n", esc(why));
        return;
    }
    if (out) {
        fprintf(out, "ok %s req=%lld", TYPES[r.type], (long long)r.req);
        if (r.type == R_CONNECTED || r.type == R_CONNECTED_FD || r.type == R_CONN_INFO_REPLY)
            fprintf(out, " local=%s:%lld remote=%s:%lld fd=%d", esc(r.local_host),
                    (long long)r.local_port, esc(r.remote_host), (long long)r.remote_port,
                    reply_carries_fd(&r));
        if (r.type == R_FAILED)
            fprintf(out, " kind=%s errno=%lld", esc(r.kind), (long long)r.err);
        if (r.type == R_SUBSCRIBED)
            fprintf(out, " port=%lld", (long long)r.port);
        if (r.type == R_LISTENER_INFO_REPLY)
            fprintf(out, " known=%d requested=%lld remote=%lld subscribed=%d", r.known,
                    (long long)r.requested_port, (long long)r.remote_port, r.subscribed);
        for (uint32_t i = 0; i < r.naddrs; i++)
            fprintf(out, " %lld/%lld/%lld/%s/%s/%lld", (long long)r.addrs[i].family,
                    (long long)r.addrs[i].type, (long long)r.addrs[i].proto, esc(r.addrs[i].canon),
                    esc(r.addrs[i].address), (long long)r.addrs[i].port);
        fputc('\n', out);
    }
    reply_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    describe(data, n, NULL);
    return 0;
}

#ifndef FUZZER

/* each frame on stdin ([u32 big-endian length][payload]) to `fn`, in a buffer of exactly
 * its size: overreads are ASan's to see */
static int each_frame(uint32_t limit, void (*fn)(const uint8_t *, size_t)) {
    uint8_t head[4];
    while (fread(head, 1, 4, stdin) == 4) {
        uint32_t n = pump_frame_len(head);
        if (n > limit)
            return 2;
        uint8_t *data = malloc(n ? n : 1);
        if (!data || fread(data, 1, n, stdin) != n)
            return 2;
        fn(data, n);
        free(data);
    }
    return 0;
}

static void describe_out(const uint8_t *data, size_t n) { describe(data, n, stdout); }

static int frames(void) { return each_frame(MAX_FRAME, describe_out); }

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    return text;
}

/* out tcp|udp IP PORT [NAME,NAME...] | dns NAME PORT | in IP PORT | skip EXE ARGV0 */
static void query(const struct rules *r, char *line) {
    char *w[5] = {0}, *save = NULL;
    int nw = 0;
    for (char *t = strtok_r(line, " \n", &save); t && nw < 5; t = strtok_r(NULL, " \n", &save))
        w[nw++] = t;
    struct ipkey ip;
    if (nw >= 4 && !strcmp(w[0], "out") && !ipkey_parse(w[2], &ip)) {
        const char *names[16];
        size_t n = 0;
        char *s2 = NULL;
        for (char *t = nw == 5 ? strtok_r(w[4], ",", &s2) : NULL; t && n < 16;
             t = strtok_r(NULL, ",", &s2))
            names[n++] = t;
        puts(rules_outgoing_remote(r, !strcmp(w[1], "udp"), &ip, atoi(w[3]), names, n)
                 ? "remote"
                 : "local");
    } else if (nw == 3 && !strcmp(w[0], "dns")) {
        puts(rules_dns_remote(r, w[1], atoi(w[2])) ? "remote" : "local");
    } else if (nw == 3 && !strcmp(w[0], "in") && !ipkey_parse(w[1], &ip)) {
        int port = atoi(w[2]);
        if (rules_incoming_wanted(r, &ip, port))
            printf("wanted %d %d\n", rules_remote_port(r, port), rules_listen_port(r, port));
        else
            puts("no");
    } else if (nw == 3 && !strcmp(w[0], "skip")) {
        puts(rules_skipped(r, w[1], w[2]) ? "yes" : "no");
    } else {
        puts("bad query");
    }
    fflush(stdout);
}

static int rules_mode(const char *path) {
    struct rules r;
    char why[160], line[4096];
    const char *text = read_file(path);
    if (rules_parse(text, &r, why, sizeof why)) {
        printf("error %s\n", why);
        return 0;
    }
    puts("ready");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        query(&r, line);
    rules_free(&r);
    return 0;
}

/* connect REQ PROTO HOST PORT WANT NONBLOCKING | resolve REQ HOST SERVICE|- FAM TYPE PROTO
 * FLAGS | subscribe REQ PORT MODE HOST LPORT WANT LISTENER [FILTER] | conn_info REQ LPORT
 * PPORT | hello TOKEN CLIENT | register REQ LISTENER REQUESTED REMOTE | listener_info REQ
 * LISTENER | listener_closed LISTENER */
static int encode(void) {
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        char *w[10] = {0}, *save = NULL;
        int nw = 0;
        line[strcspn(line, "\n")] = 0;
        for (char *t = strtok_r(line, " ", &save); t && nw < 9; t = strtok_r(NULL, " ", &save))
            w[nw++] = t;
        char *rest = save && *save ? save : "";
        uint8_t buf[64];
        struct mpw m;
        mpw_init(&m, buf, sizeof buf); /* small: the heap path gets exercised too */
        if (nw == 7 && !strcmp(w[0], "connect"))
            frame_connect(&m, atoll(w[1]), w[2], w[3], atoll(w[4]), atoi(w[5]), atoi(w[6]));
        else if (nw == 8 && !strcmp(w[0], "resolve"))
            frame_resolve(&m, atoll(w[1]), w[2], strcmp(w[3], "-") ? w[3] : NULL, atoll(w[4]),
                          atoll(w[5]), atoll(w[6]), atoll(w[7]));
        else if (nw >= 8 && !strcmp(w[0], "subscribe"))
            frame_subscribe(&m, atoll(w[1]), atoll(w[2]), w[3], nw == 9 ? w[8] : "", w[4],
                            atoll(w[5]), atoi(w[6]), atoll(w[7]));
        else if (nw == 5 && !strcmp(w[0], "register"))
            frame_register_listener(&m, atoll(w[1]), atoll(w[2]), atoll(w[3]), atoll(w[4]));
        else if (nw == 3 && !strcmp(w[0], "listener_info"))
            frame_listener_info(&m, atoll(w[1]), atoll(w[2]));
        else if (nw == 2 && !strcmp(w[0], "listener_closed"))
            frame_listener_closed(&m, atoll(w[1]));
        else if (nw == 4 && !strcmp(w[0], "conn_info"))
            frame_conn_info(&m, atoll(w[1]), atoll(w[2]), atoll(w[3]));
        else if (nw == 3 && !strcmp(w[0], "hello"))
            frame_hello(&m, w[1], w[2]);
        (void)rest;
        for (size_t i = 0; i < m.len && !m.failed; i++)
            printf("%02x", m.buf[i]);
        putchar('\n');
        fflush(stdout);
        mpw_free(&m);
    }
    return 0;
}

static const char *PUMP_KINDS[] = {"other",  "data",   "eof",   "close", "credit",
                                   "attach", "replay", "synced", "reset", "local"};

static void pump_read(const uint8_t *data, size_t n) {
    struct pump_frame f;
    pump_parse(data, n, &f);
    if (f.kind == PK_OTHER || f.kind == PK_LOCAL) {
        puts(PUMP_KINDS[f.kind]); /* (its fields are not read) */
    } else {
        printf("%s conn=%lld reset=%d amount=%lld fd=%lld credit=%lld len=%u", PUMP_KINDS[f.kind],
               (long long)f.conn, f.reset, (long long)f.amount, (long long)f.fd,
               (long long)f.credit, f.len);
        if (f.kind == PK_DATA || f.kind == PK_REPLAY) {
            putchar(' ');
            for (uint32_t i = 0; i < f.len; i++)
                printf("%02x", f.data[i]);
        }
        putchar('\n');
    }
    fflush(stdout);
}

static int pump_encode(void) {
    char line[4096], word[16], text[4000];
    long long a, b;
    while (fgets(line, sizeof line, stdin)) {
        uint8_t buf[64];
        struct mpw m;
        mpw_init(&m, buf, sizeof buf);
        if (sscanf(line, "data %lld %lld", &a, &b) == 2) {
            uint8_t *at = mpw_reserve(&m, PUMP_DATA_HEADER + (size_t)b);
            if (at) {
                pump_data_header(at, (uint64_t)a, (uint32_t)b);
                memset(at + PUMP_DATA_HEADER, 'x', (size_t)b);
            }
        } else if (sscanf(line, "close %lld %lld", &a, &b) == 2)
            pump_frame_close(&m, a, (int)b);
        else if (sscanf(line, "credit %lld %lld", &a, &b) == 2)
            pump_frame_credit(&m, a, b);
        else if (sscanf(line, "%15s %lld", word, &a) == 2 && !strcmp(word, "eof"))
            pump_frame_eof(&m, a);
        else if (sscanf(line, "%15s %lld", word, &a) == 2 && !strcmp(word, "sync"))
            pump_frame_sync(&m, a);
        else if (sscanf(line, "error %3999[^\n]", text) == 1)
            pump_frame_error(&m, text);
        for (size_t i = 0; i < m.len && !m.failed; i++)
            printf("%02x", m.buf[i]);
        putchar('\n');
        fflush(stdout);
        mpw_free(&m);
    }
    return 0;
}

/* a table file as the intproxy writes it, read as the relay reads it */
static int origins_mode(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    static uint8_t slot[ORIGIN_SLOT_SIZE];
    char line[256];
    int ipv6, port, app_port;
    while (fgets(line, sizeof line, stdin)) {
        struct origin o;
        if (sscanf(line, "%d %d %d", &ipv6, &port, &app_port) != 3 || port < 0 ||
            port >= ORIGIN_PORTS || fseek(f, (long)origin_offset(ipv6, port), SEEK_SET) ||
            fread(slot, 1, sizeof slot, f) != sizeof slot || !origin_decode(slot, app_port, &o))
            puts("none");
        else
            printf("%s %d %s %d %d\n", o.remote_host, o.remote_port, o.local_host, o.local_port,
                   o.ask);
        fflush(stdout);
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "frames"))
        return frames();
    if (argc == 3 && !strcmp(argv[1], "rules"))
        return rules_mode(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "encode"))
        return encode();
    if (argc == 3 && !strcmp(argv[1], "origins"))
        return origins_mode(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "pump"))
        return each_frame(PUMP_MAX_FRAME, pump_read);
    if (argc == 2 && !strcmp(argv[1], "pump_encode"))
        return pump_encode();
    fprintf(stderr, "usage: relay_check frames | rules TABLE | encode | origins TABLE | pump | "
                    "pump_encode\n");
    return 2;
}

#endif
