#include "rules.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------ addresses */

static void normalise(struct ipkey *ip) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (ip->family == AF_INET6 && memcmp(ip->bytes, mapped, 12) == 0) {
        memmove(ip->bytes, ip->bytes + 12, 4);
        memset(ip->bytes + 4, 0, 12);
        ip->family = AF_INET;
        ip->mapped = 1;
    }
}

int ipkey_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct ipkey *ip, int *port) {
    memset(ip, 0, sizeof *ip);
    if (!sa)
        return -1;
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        ip->family = AF_INET;
        memcpy(ip->bytes, &in->sin_addr, 4);
        *port = ntohs(in->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        ip->family = AF_INET6;
        memcpy(ip->bytes, &in6->sin6_addr, 16);
        *port = ntohs(in6->sin6_port);
        normalise(ip);
        return 0;
    }
    return -1;
}

int ipkey_parse(const char *text, struct ipkey *ip) {
    char bare[INET6_ADDRSTRLEN + 1];
    size_t n = strcspn(text, "%"); /* scope ids are no part of any entry */
    if (n >= sizeof bare)
        return -1;
    memcpy(bare, text, n);
    bare[n] = 0;
    memset(ip, 0, sizeof *ip);
    if (inet_pton(AF_INET, bare, ip->bytes) == 1) {
        ip->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, bare, ip->bytes) == 1) {
        ip->family = AF_INET6;
        normalise(ip);
        return 0;
    }
    return -1;
}

int ipkey_is_unspecified(const struct ipkey *ip) {
    static const uint8_t zero[16];
    return memcmp(ip->bytes, zero, ip->family == AF_INET ? 4 : 16) == 0;
}

int ipkey_is_loopback(const struct ipkey *ip) {
    static const uint8_t one[16] = {[15] = 1};
    if (ipkey_is_unspecified(ip))
        return 1;
    if (ip->family == AF_INET)
        return ip->bytes[0] == 127;
    return memcmp(ip->bytes, one, 16) == 0;
}

static int in_net(const struct ipkey *ip, const struct ip_entry *net) {
    if (ip->family != net->ip.family)
        return 0;
    int full = net->prefix / 8, rest = net->prefix % 8;
    if (memcmp(ip->bytes, net->ip.bytes, (size_t)full) != 0)
        return 0;
    if (!rest)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (ip->bytes[full] & mask) == (net->ip.bytes[full] & mask);
}

/* ------------------------------------------------------------------ matching */

static int has_port(const int *ports, size_t n, int port) {
    for (size_t i = 0; i < n; i++)
        if (ports[i] == port)
            return 1;
    return 0;
}

/* A name as entries hold it: no trailing dots, lower case (DNS names are ASCII here). */
static void name_key(const char *name, char *out, size_t cap) {
    size_t n = strlen(name);
    while (n && name[n - 1] == '.')
        n--;
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)name[i]);
    out[n] = 0;
}

/* _Compiled.matches of mirrord/settings/outgoing_filter.py, on the compiled table */
static int index_match(const struct index *x, const struct ipkey *ip, int port,
                       const char *const *names, size_t nnames) {
    if (x->any_port || has_port(x->ports, x->nports, port))
        return 1;
    if (ip) {
        for (size_t i = 0; i < x->nips; i++) {
            const struct ip_entry *e = &x->ips[i];
            if (e->port && e->port != port)
                continue;
            if (e->prefix < 0 ? e->ip.family == ip->family &&
                                    memcmp(e->ip.bytes, ip->bytes, 16) == 0
                              : in_net(ip, e))
                return 1;
        }
    }
    if (x->nnames) {
        char key[256];
        for (size_t i = 0; i < nnames; i++) {
            name_key(names[i], key, sizeof key);
            for (size_t j = 0; j < x->nnames; j++)
                if ((!x->names[j].port || x->names[j].port == port) &&
                    strcmp(x->names[j].name, key) == 0)
                    return 1;
        }
    }
    return 0;
}

static int filter_says_remote(int mode, int matched) {
    if (mode == FILTER_NONE)
        return 1;
    return mode == FILTER_REMOTE ? matched : !matched;
}

int rules_outgoing_remote(const struct rules *r, int udp, const struct ipkey *ip, int port,
                          const char *const *names, size_t nnames) {
    if (!(udp ? r->udp : r->tcp))
        return 0;
    if (ipkey_is_loopback(ip) && (r->ignore_localhost || rules_debugger_local(r, ip, port)))
        return 0;
    if (r->filter_mode == FILTER_NONE)
        return 1;
    int matched = index_match(&r->idx[udp ? IDX_UDP : IDX_TCP], ip, port, names, nnames);
    return filter_says_remote(r->filter_mode, matched);
}

int rules_dns_remote(const struct rules *r, const char *name, int port) {
    struct ipkey ip;
    char key[256];
    if (!r->dns_enabled || !name || !*name || ipkey_parse(name, &ip) == 0)
        return 0;
    if (!strcasecmp(name, "localhost") || !strcasecmp(name, "localhost.localdomain") ||
        !strcasecmp(name, "ip6-localhost"))
        return 0;
    if (r->dns_filter_mode != FILTER_NONE) {
        const char *names[1] = {name};
        int matched = index_match(&r->idx[IDX_DNS], NULL, port, names, 1);
        if (!filter_says_remote(r->dns_filter_mode, matched))
            return 0;
    }
    name_key(name, key, sizeof key);
    for (size_t i = 0; i < r->nlocal_names; i++)
        if (strcmp(r->local_names[i], key) == 0)
            return 0;
    return 1;
}

int rules_incoming_wanted(const struct rules *r, const struct ipkey *ip, int port) {
    if (r->incoming_mode == INCOMING_OFF || port == 0)
        return 0;
    if (has_port(r->ignore_ports, r->nignore_ports, port))
        return 0;
    if (r->ports_only && !has_port(r->ports, r->nports, port))
        return 0;
    if (rules_debugger_local(r, ip, port))
        return 0;
    return !(r->incoming_ignore_localhost && ipkey_is_loopback(ip) && !ipkey_is_unspecified(ip));
}

static const struct port_pair *pair_of(const struct port_pair *pairs, size_t n, int port) {
    const struct port_pair *found = NULL;
    for (size_t i = 0; i < n; i++)
        if (pairs[i].from == port)
            found = &pairs[i]; /* a later pair wins, as in a dict */
    return found;
}

int rules_remote_port(const struct rules *r, int port) {
    const struct port_pair *p = pair_of(r->port_mapping, r->nport_mapping, port);
    return p ? p->to : port;
}

int rules_listen_port(const struct rules *r, int port) {
    const struct port_pair *p = pair_of(r->listen_ports, r->nlisten_ports, port);
    return p ? p->to : port;
}

int rules_has_listen_port(const struct rules *r, int port) {
    return pair_of(r->listen_ports, r->nlisten_ports, port) != NULL;
}

int rules_debugger_local(const struct rules *r, const struct ipkey *ip, int port) {
    static const uint8_t one[16] = {[15] = 1};
    /* the addresses DebuggerPorts names: 127.0.0.1, ::1, 0.0.0.0, :: (as written) */
    int local = ip->mapped ? 0
                : ip->family == AF_INET
                    ? ipkey_is_unspecified(ip) || !memcmp(ip->bytes, "\x7f\0\0\x01", 4)
                    : ipkey_is_unspecified(ip) || !memcmp(ip->bytes, one, 16);
    for (size_t i = 0; local && i < r->ndebugger; i++)
        if (r->debugger[i].from <= port && port <= r->debugger[i].to)
            return 1;
    return 0;
}

int rules_skipped(const struct rules *r, const char *exec_name, const char *invoked_as) {
    for (size_t i = 0; i < r->nskip; i++)
        if ((exec_name && !strcmp(r->skip[i], exec_name)) ||
            (invoked_as && !strcmp(r->skip[i], invoked_as)))
            return 1;
    return 0;
}

/* ------------------------------------------------------------------ parsing */

#define GROW(arr, n)                                                                          \
    (((arr) = realloc((arr), ((n) + 1) * sizeof *(arr))) ? &(arr)[(n)++] : NULL)

static int number(const char *s, long lo, long hi, int *out) {
    char *end;
    if (!s || !*s)
        return -1;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int filter_mode(const char *s, int *mode) {
    if (!s)
        return -1;
    if (!strcmp(s, "none"))
        *mode = FILTER_NONE;
    else if (!strcmp(s, "local"))
        *mode = FILTER_LOCAL;
    else if (!strcmp(s, "remote"))
        *mode = FILTER_REMOTE;
    else
        return -1;
    return 0;
}

static int add_name(char ***list, size_t *n, const char *s) {
    char **slot;
    if (!s || !*s)
        return -1;
    if (!(slot = GROW(*list, *n)))
        return -1;
    *slot = strdup(s);
    return *slot ? 0 : -1;
}

static int add_port(int **list, size_t *n, const char *s) {
    int port, *slot;
    if (number(s, 0, 65535, &port) || !(slot = GROW(*list, *n)))
        return -1;
    *slot = port;
    return 0;
}

static int add_pair(struct port_pair **list, size_t *n, const char *a, const char *b) {
    struct port_pair *slot;
    int from, to;
    if (number(a, 0, 65535, &from) || number(b, 0, 65535, &to) || !(slot = GROW(*list, *n)))
        return -1;
    slot->from = from;
    slot->to = to;
    return 0;
}

/* "any" | "port N" | "ip ADDR PORT" | "net ADDR PREFIX PORT" | "name NAME PORT" */
static int add_match(struct index *x, char **w, int nw) {
    if (nw == 1 && !strcmp(w[0], "any")) {
        x->any_port = 1;
        return 0;
    }
    if (nw == 2 && !strcmp(w[0], "port"))
        return add_port(&x->ports, &x->nports, w[1]);
    if ((nw == 3 && !strcmp(w[0], "ip")) || (nw == 4 && !strcmp(w[0], "net"))) {
        struct ip_entry e;
        e.prefix = -1;
        if (ipkey_parse(w[1], &e.ip) || number(w[nw - 1], 0, 65535, &e.port))
            return -1;
        if (nw == 4 && number(w[2], 0, e.ip.family == AF_INET ? 32 : 128, &e.prefix))
            return -1;
        struct ip_entry *slot = GROW(x->ips, x->nips);
        if (!slot)
            return -1;
        *slot = e;
        return 0;
    }
    if (nw == 3 && !strcmp(w[0], "name")) {
        struct name_entry *slot;
        int port;
        if (number(w[2], 0, 65535, &port) || !(slot = GROW(x->names, x->nnames)))
            return -1;
        slot->port = port;
        slot->name = strdup(w[1]);
        return slot->name ? 0 : -1;
    }
    return -1;
}

#define MAX_WORDS 8

static int parse_line(struct rules *r, char *line) {
    char *w[MAX_WORDS], *save = NULL, *rest;
    int nw = 0;
    /* http_filter carries JSON: the rest of its line, spaces and all */
    if (!strncmp(line, "http_filter ", 12)) {
        free(r->http_filter);
        r->http_filter = strdup(line + 12);
        return r->http_filter ? 0 : -1;
    }
    for (rest = strtok_r(line, " ", &save); rest && nw < MAX_WORDS;
         rest = strtok_r(NULL, " ", &save))
        w[nw++] = rest;
    if (rest)
        return -1;
    if (!nw)
        return 0;
    const char *k = w[0];
    if (!strcmp(k, "outgoing") && nw == 4)
        return number(w[1], 0, 1, &r->tcp) || number(w[2], 0, 1, &r->udp) ||
                       number(w[3], 0, 1, &r->ignore_localhost)
                   ? -1
                   : 0;
    if (!strcmp(k, "filter") && nw == 2)
        return filter_mode(w[1], &r->filter_mode);
    if (!strcmp(k, "match") && nw >= 3) {
        int which = !strcmp(w[1], "tcp") ? IDX_TCP
                    : !strcmp(w[1], "udp") ? IDX_UDP
                    : !strcmp(w[1], "dns") ? IDX_DNS
                                           : -1;
        return which < 0 ? -1 : add_match(&r->idx[which], w + 2, nw - 2);
    }
    if (!strcmp(k, "dns") && nw == 3)
        return number(w[1], 0, 1, &r->dns_enabled) || filter_mode(w[2], &r->dns_filter_mode)
                   ? -1
                   : 0;
    if (!strcmp(k, "local_name") && nw == 2)
        return add_name(&r->local_names, &r->nlocal_names, w[1]);
    if (!strcmp(k, "incoming") && nw == 3) {
        if (number(w[2], 0, 1, &r->incoming_ignore_localhost))
            return -1;
        if (!strcmp(w[1], "off"))
            r->incoming_mode = INCOMING_OFF;
        else if (!strcmp(w[1], "mirror"))
            r->incoming_mode = INCOMING_MIRROR;
        else if (!strcmp(w[1], "steal"))
            r->incoming_mode = INCOMING_STEAL;
        else
            return -1;
        return 0;
    }
    if (!strcmp(k, "port_mapping") && nw == 3)
        return add_pair(&r->port_mapping, &r->nport_mapping, w[1], w[2]);
    if (!strcmp(k, "listen_port") && nw == 3)
        return add_pair(&r->listen_ports, &r->nlisten_ports, w[1], w[2]);
    if (!strcmp(k, "ignore_port") && nw == 2)
        return add_port(&r->ignore_ports, &r->nignore_ports, w[1]);
    if (!strcmp(k, "ports_only") && nw == 1) {
        r->ports_only = 1;
        return 0;
    }
    if (!strcmp(k, "port") && nw == 2)
        return add_port(&r->ports, &r->nports, w[1]);
    if (!strcmp(k, "debugger_ports") && nw == 3)
        return add_pair(&r->debugger, &r->ndebugger, w[1], w[2]);
    if (!strcmp(k, "skip") && nw == 2)
        return add_name(&r->skip, &r->nskip, w[1]);
    return -1;
}

#define MAGIC "mirrord-relay-rules 1"

int rules_parse(const char *text, struct rules *out, char *why, size_t whylen) {
    memset(out, 0, sizeof *out);
    /* what no table says: mirrord's defaults */
    out->tcp = out->udp = out->dns_enabled = 1;
    out->incoming_mode = INCOMING_MIRROR;
    if (!text || strncmp(text, MAGIC, strlen(MAGIC)) ||
        (text[strlen(MAGIC)] != '\n' && text[strlen(MAGIC)] != 0)) {
        snprintf(why, whylen, "not a rules table (it must start with \"%s\")", MAGIC);
        return -1;
    }
    char *copy = strdup(text + strlen(MAGIC));
    if (!copy) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char shown[80];
        snprintf(shown, sizeof shown, "%s", line);
        if (parse_line(out, line)) {
            snprintf(why, whylen, "bad rules line: %s", shown);
            free(copy);
            rules_free(out);
            return -1;
        }
    }
    free(copy);
    if (!out->http_filter && !(out->http_filter = strdup(""))) {
        rules_free(out);
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

static void free_names(char **list, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

void rules_free(struct rules *r) {
    for (int i = 0; i < 3; i++) {
        free(r->idx[i].ports);
        free(r->idx[i].ips);
        for (size_t j = 0; j < r->idx[i].nnames; j++)
            free(r->idx[i].names[j].name);
        free(r->idx[i].names);
    }
    free_names(r->local_names, r->nlocal_names);
    free_names(r->skip, r->nskip);
    free(r->http_filter);
    free(r->port_mapping);
    free(r->listen_ports);
    free(r->ignore_ports);
    free(r->ports);
    free(r->debugger);
    memset(r, 0, sizeof *r);
}
