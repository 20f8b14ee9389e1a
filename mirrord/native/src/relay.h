/* What the relay's parts share: the session, per-descriptor state, the intproxy link,
 * the name memory. Only the hooks' files include this; the sans-I/O cores (mp, frames,
 * rules) stand alone. */
#ifndef MIRRORD_RELAY_H
#define MIRRORD_RELAY_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "frames.h"
#include "rules.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- the session (process.c) */

enum { RELAY_OFF = 0, RELAY_ON = 1, RELAY_SKIPPED = 2, RELAY_STOOD_DOWN = 3 };
extern atomic_int relay_state;
extern struct rules relay_rules;
extern const char *relay_socket_path, *relay_token;

static inline int relay_on(void) {
    return atomic_load_explicit(&relay_state, memory_order_relaxed) == RELAY_ON;
}

/* "mirrord: ..." on stderr, in one write */
void relay_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int relay_debug(void);

/* ---- per-descriptor state (fdstate.c) */

struct udp_pair {
    struct sockaddr_storage remote, relay;
    socklen_t remote_len, relay_len;
};

struct channel;

struct fdstate {
    int refs; /* descriptors sharing it (dup) */
    /* outgoing: connected to `relay` instead of `remote` (getpeername reports remote) */
    int redirected;
    struct sockaddr_storage relay, remote;
    socklen_t relay_len, remote_len;
    /* accepted from the target: getsockname reports `local` */
    int has_local;
    struct sockaddr_storage local;
    socklen_t local_len;
    /* unconnected UDP: one relay per remote */
    struct udp_pair *pairs;
    size_t npairs;
    /* a listener for the target's port, known to the intproxy by its socket's inode in
     * every process that holds it (reloaders, prefork servers) */
    int listening, subscribed;
    int requested_port, remote_port;
    unsigned long long inode;
    unsigned long long not_listener; /* the inode the intproxy said is no listener */
    /* the relay's own link to the intproxy */
    struct channel *channel;
};

extern pthread_mutex_t fd_lock;
int fd_tracked(int fd); /* lock-free: may this descriptor have state? */
struct fdstate *fd_get(int fd);    /* fd_lock held */
struct fdstate *fd_ensure(int fd); /* fd_lock held; NULL when out of memory or range */
void fd_share(int from, int to);   /* fd_lock held: `to` is a dup of `from` */
/* The descriptor is going away (close, dup2 over it): drop its state; a listener's
 * closing is told to the intproxy (the subscription ends with the last process's). */
void fd_forget(int fd);
void fd_after_fork_child(void);

/* ---- the intproxy link (channel.c) */

enum { CHAN_OK = 0, CHAN_UNAVAILABLE = -1 };
/* chan_request's `keep`: what the link must outlive */
enum { CHAN_DONE = 0, CHAN_KEEP = 1, CHAN_STICKY = 2 };

int64_t chan_next_req(void);
/* Send one frame (holding request `req`) and wait for its reply; `fd_out` gets the
 * descriptor a reply carries (or -1). CHAN_UNAVAILABLE: the intproxy cannot be reached
 * or broke the link (reported once on stderr). `keep`: CHAN_KEEP, the channel now owns
 * a subscription and stays open while the process lives; CHAN_STICKY, a connect's relay
 * may depend on it for a while (kept idle rather than closed). */
int chan_request(const uint8_t *frame, size_t n, int64_t req, struct reply *out, int *fd_out,
                 int keep);
/* Send a frame that has no reply. */
int chan_notify(const uint8_t *frame, size_t n);
/* Open the first link now: a layer's presence keeps the intproxy alive for children.
 * `wait_hello`: finish the handshake now too (at start; a fork child does not wait). */
void chan_warm(int wait_hello);
void chan_lost_fd(struct channel *c); /* the app closed (or replaced) a channel's fd */
void chan_after_fork_child(void);
void chan_fork_prepare(void);
void chan_fork_parent(void);

/* ---- names the app resolved, for filters that name hosts (names.c) */

#define NAMES_PER_ADDRESS 8
void names_remember(const char *name, const struct sockaddr *sa);
/* Copies up to NAMES_PER_ADDRESS names into `out`; returns how many. */
size_t names_of(const struct ipkey *ip, char out[][256]);
void names_fork_prepare(void);
void names_fork_parent(void);
void names_after_fork_child(void);

/* ---- shared helpers (outgoing.c) */

/* `host` and `port` as a sockaddr of `family` (IPv4 in an IPv6 socket: ::ffff:a.b.c.d) */
socklen_t shaped_address(int family, const char *host, int port, struct sockaddr_storage *out);
void copy_out_address(const struct sockaddr_storage *from, socklen_t from_len,
                      struct sockaddr *to, socklen_t *to_len);
int same_address(const struct sockaddr *a, socklen_t alen, const struct sockaddr *b,
                 socklen_t blen);
/* Make `fd` refer to the socket `incoming` (connected in the target), keeping the
 * options and flags the app set on `fd`; closes `incoming`. */
int adopt_socket(int fd, int incoming, int udp);
int socket_type(int fd);

/* ---- the intproxy's origin table (origins.c) */

/* The origin of the intproxy's connection from `port` (IPv6 or not) to the app's
 * `app_port`, shaped for `family`: 1 when the table holds it (and no stolen socket waits
 * to be claimed), else 0 and the intproxy is asked. */
int origin_lookup(int ipv6, int port, int app_port, int family, struct sockaddr_storage *remote,
                  socklen_t *remote_len, struct sockaddr_storage *local, socklen_t *local_len);

#endif
