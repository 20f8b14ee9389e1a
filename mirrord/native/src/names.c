/* Which names the app resolved to which addresses: outgoing filters may name hosts, and
 * a connect() only sees the address. Bounded: the oldest are forgotten first. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "relay.h"

#define MEMORY 4096
#define BUCKETS 8192

struct remembered {
    struct ipkey ip;
    char name[256];
    int next; /* in its bucket's chain, -1 ends it */
    int used;
};

static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static struct remembered memory[MEMORY];
static int buckets[BUCKETS];
static int ready, oldest;

static int same_ip(const struct ipkey *a, const struct ipkey *b) {
    return a->family == b->family && !memcmp(a->bytes, b->bytes, sizeof a->bytes);
}

static unsigned bucket_of(const struct ipkey *ip) {
    unsigned h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ ip->bytes[i]) * 16777619u;
    return (h ^ (unsigned)ip->family) % BUCKETS;
}

static void unlink_slot(int i) {
    int *at = &buckets[bucket_of(&memory[i].ip)];
    while (*at != -1 && *at != i)
        at = &memory[*at].next;
    if (*at == i)
        *at = memory[i].next;
    memory[i].used = 0;
}

void names_remember(const char *name, const struct sockaddr *sa) {
    struct ipkey ip;
    int port;
    if (!name || !*name || strlen(name) >= sizeof memory[0].name ||
        ipkey_from_sockaddr(sa, sizeof(struct sockaddr_in6), &ip, &port))
        return;
    pthread_mutex_lock(&names_lock);
    if (!ready) {
        memset(buckets, 0xff, sizeof buckets);
        ready = 1;
    }
    unsigned b = bucket_of(&ip);
    for (int i = buckets[b]; i != -1; i = memory[i].next)
        if (same_ip(&memory[i].ip, &ip) && !strcasecmp(memory[i].name, name)) {
            pthread_mutex_unlock(&names_lock);
            return;
        }
    int i = oldest;
    oldest = (oldest + 1) % MEMORY;
    if (memory[i].used)
        unlink_slot(i);
    memory[i].ip = ip;
    snprintf(memory[i].name, sizeof memory[i].name, "%s", name);
    memory[i].used = 1;
    memory[i].next = buckets[b];
    buckets[b] = i;
    pthread_mutex_unlock(&names_lock);
}

size_t names_of(const struct ipkey *ip, char out[][256]) {
    size_t n = 0;
    pthread_mutex_lock(&names_lock);
    if (ready)
        for (int i = buckets[bucket_of(ip)]; i != -1 && n < NAMES_PER_ADDRESS;
             i = memory[i].next)
            if (same_ip(&memory[i].ip, ip))
                memcpy(out[n++], memory[i].name, sizeof memory[i].name);
    pthread_mutex_unlock(&names_lock);
    return n;
}

void names_fork_prepare(void) { pthread_mutex_lock(&names_lock); }
void names_fork_parent(void) { pthread_mutex_unlock(&names_lock); }
void names_after_fork_child(void) { pthread_mutex_init(&names_lock, NULL); }
