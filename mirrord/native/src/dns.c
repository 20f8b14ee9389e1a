/* Name resolution as the target resolves it: getaddrinfo, gethostbyname(_r). Lists this
 * side builds are remembered, so freeaddrinfo() knows whose they are. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "real.h"
#include "relay.h"

/* one allocation per entry: the addrinfo, its address and its canonical name */
struct built {
    struct addrinfo ai;
    struct sockaddr_storage addr;
    char canon[NAME_MAX_];
};

#define OURS_MAX 1024
static pthread_mutex_t ours_lock = PTHREAD_MUTEX_INITIALIZER;
static struct addrinfo *ours[OURS_MAX]; /* lists handed out and not freed yet */

static int adopt_list(struct addrinfo *head) {
    pthread_mutex_lock(&ours_lock);
    for (int i = 0; i < OURS_MAX; i++)
        if (!ours[i]) {
            ours[i] = head;
            pthread_mutex_unlock(&ours_lock);
            return 0;
        }
    pthread_mutex_unlock(&ours_lock);
    return -1;
}

static int release_list(struct addrinfo *head) {
    int found = 0;
    pthread_mutex_lock(&ours_lock);
    for (int i = 0; i < OURS_MAX && !found; i++)
        if (ours[i] == head) {
            ours[i] = NULL;
            found = 1;
        }
    pthread_mutex_unlock(&ours_lock);
    return found;
}

static void free_built(struct addrinfo *ai) {
    while (ai) {
        struct addrinfo *next = ai->ai_next;
        free(ai); /* ai is the first member of its `struct built` */
        ai = next;
    }
}

static int numeric_port(const char *service) {
    if (!service || !*service || strlen(service) > 5)
        return 0;
    int port = 0;
    for (const char *s = service; *s; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        port = port * 10 + (*s - '0');
    }
    return port <= 65535 ? port : 0;
}

/* Resolve through the target: 0 and a reply, or an EAI_* code. */
static int ask_resolve(const char *host, const char *service, int family, int type, int proto,
                       int flags, struct reply *reply) {
    uint8_t buf[512];
    struct mpw w;
    int fd = -1;
    int64_t req = chan_next_req();
    mpw_init(&w, buf, sizeof buf);
    frame_resolve(&w, req, host, service, family, type, proto, flags);
    int rc = w.failed ? CHAN_UNAVAILABLE : chan_request(w.buf, w.len, req, reply, &fd, 0);
    mpw_free(&w);
    if (fd >= 0)
        real_close(fd);
    if (rc != CHAN_OK)
        return EAI_AGAIN;
    if (reply->type == R_RESOLVED)
        return 0;
    int code = reply->type == R_FAILED && !strcmp(reply->kind, "gai") ? (int)reply->err : EAI_AGAIN;
    reply_free(reply);
    return code ? code : EAI_FAIL;
}

static void remember_all(const char *name, const struct addrinfo *ai) {
    struct ipkey ip;
    if (ipkey_parse(name, &ip) == 0)
        return; /* an address is no name */
    for (; ai; ai = ai->ai_next)
        if (ai->ai_addr)
            names_remember(name, ai->ai_addr);
}

EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res) {
    real_init();
    if (!relay_on() || !node || !rules_dns_remote(&relay_rules, node, numeric_port(service))) {
        int rc = real_getaddrinfo(node, service, hints, res);
        if (rc == 0 && node && relay_on() && relay_rules.filter_mode != FILTER_NONE)
            remember_all(node, *res);
        return rc;
    }
    struct reply reply;
    int rc = ask_resolve(node, service, hints ? hints->ai_family : 0,
                         hints ? hints->ai_socktype : 0, hints ? hints->ai_protocol : 0,
                         hints ? hints->ai_flags : 0, &reply);
    if (relay_debug())
        relay_log("getaddrinfo %s through the target: %d", node, rc);
    if (rc)
        return rc;
    struct addrinfo *head = NULL, **tail = &head;
    for (uint32_t i = 0; i < reply.naddrs; i++) {
        const struct resolved_addr *a = &reply.addrs[i];
        if (a->family != AF_INET && a->family != AF_INET6)
            continue;
        struct built *b = calloc(1, sizeof *b);
        if (!b) {
            free_built(head);
            reply_free(&reply);
            return EAI_MEMORY;
        }
        socklen_t len = shaped_address((int)a->family, a->address, (int)a->port, &b->addr);
        if (!len || b->addr.ss_family != a->family) {
            free(b);
            continue;
        }
        b->ai.ai_family = (int)a->family;
        b->ai.ai_socktype = (int)a->type;
        b->ai.ai_protocol = (int)a->proto;
        b->ai.ai_addrlen = len;
        b->ai.ai_addr = (struct sockaddr *)&b->addr;
        if (a->canon[0]) {
            memcpy(b->canon, a->canon, sizeof b->canon);
            b->ai.ai_canonname = b->canon;
        }
        *tail = &b->ai;
        tail = &b->ai.ai_next;
    }
    reply_free(&reply);
    if (!head)
        return EAI_NONAME;
    if (adopt_list(head)) {
        free_built(head);
        return EAI_MEMORY;
    }
    remember_all(node, head);
    *res = head;
    return 0;
}

EXPORT void freeaddrinfo(struct addrinfo *res) {
    real_init();
    if (res && release_list(res))
        free_built(res);
    else
        real_freeaddrinfo(res);
}

/* A hostent in `buf`: the name, no aliases, the distinct IPv4 addresses of `reply`. */
static int fill_hostent(const char *name, const struct reply *reply, struct hostent *he,
                        char *buf, size_t buflen) {
    const char *canon = name;
    for (uint32_t i = 0; i < reply->naddrs; i++)
        if (reply->addrs[i].canon[0]) {
            canon = reply->addrs[i].canon;
            break;
        }
    size_t name_len = strlen(canon) + 1;
    uint32_t count = 0;
    size_t need = name_len + sizeof(char *) * (reply->naddrs + 2) + 4 * reply->naddrs + 16;
    if (buflen < need)
        return ERANGE;
    char **aliases = (char **)(((uintptr_t)buf + 7) & ~(uintptr_t)7);
    char **list = aliases + 1;
    char *addrs = (char *)(list + reply->naddrs + 1);
    char *name_at = addrs + 4 * reply->naddrs;
    aliases[0] = NULL;
    for (uint32_t i = 0; i < reply->naddrs; i++) {
        struct in_addr v4;
        if (reply->addrs[i].family != AF_INET ||
            inet_pton(AF_INET, reply->addrs[i].address, &v4) != 1)
            continue;
        int dup = 0;
        for (uint32_t j = 0; j < count; j++)
            dup |= !memcmp(list[j], &v4, 4);
        if (dup)
            continue;
        list[count] = addrs + 4 * count;
        memcpy(list[count], &v4, 4);
        count++;
    }
    list[count] = NULL;
    memcpy(name_at, canon, name_len);
    he->h_name = name_at;
    he->h_aliases = aliases;
    he->h_addrtype = AF_INET;
    he->h_length = 4;
    he->h_addr_list = list;
    return count ? 0 : ENOENT;
}

static int herror_of(int gai) {
    return gai == EAI_NONAME || gai == EAI_NODATA ? HOST_NOT_FOUND
           : gai == EAI_AGAIN                      ? TRY_AGAIN
                                                   : NO_RECOVERY;
}

EXPORT int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen,
                           struct hostent **result, int *h_errnop) {
    real_init();
    if (!relay_on() || !name || !rules_dns_remote(&relay_rules, name, 0))
        return real_gethostbyname_r(name, ret, buf, buflen, result, h_errnop);
    struct reply reply;
    *result = NULL;
    int rc = ask_resolve(name, NULL, AF_INET, SOCK_STREAM, 0, AI_CANONNAME, &reply);
    if (rc) {
        if (h_errnop)
            *h_errnop = herror_of(rc);
        return rc == EAI_AGAIN ? EAGAIN : ENOENT;
    }
    rc = fill_hostent(name, &reply, ret, buf, buflen);
    reply_free(&reply);
    if (rc == ERANGE)
        return ERANGE;
    if (rc) {
        if (h_errnop)
            *h_errnop = HOST_NOT_FOUND;
        return ENOENT;
    }
    *result = ret;
    return 0;
}

EXPORT struct hostent *gethostbyname(const char *name) {
    static __thread struct hostent he;
    static __thread char buf[8192];
    struct hostent *result = NULL;
    int err = 0;
    real_init();
    if (!relay_on() || !name || !rules_dns_remote(&relay_rules, name, 0))
        return real_gethostbyname(name);
    if (gethostbyname_r(name, &he, buf, sizeof buf, &result, &err))
        h_errno = err ? err : NO_RECOVERY;
    else if (!result)
        h_errno = err ? err : HOST_NOT_FOUND;
    return result;
}
