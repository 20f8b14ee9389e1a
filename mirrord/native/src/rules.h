/* The session's decisions (local or through the target?), evaluated from the table the
 * CLI compiles from the same settings objects the Python layer uses
 * (mirrord/native/table.py): this side only looks entries up, it interprets nothing.
 * Sans-I/O. */
#ifndef MIRRORD_RULES_H
#define MIRRORD_RULES_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* An IP address as the filters compare it: IPv4-mapped IPv6 is the IPv4 address. */
struct ipkey {
    int family; /* AF_INET or AF_INET6 */
    uint8_t bytes[16];
    int mapped; /* written as ::ffff:a.b.c.d (compared as the IPv4 address all the same) */
};

struct ip_entry {
    struct ipkey ip;
    int prefix; /* -1: one address */
    int port;   /* 0: any */
};

struct name_entry {
    char *name;
    int port;
};

/* One protocol's entries, as OutgoingFilter compiles them. */
struct index {
    int any_port;
    int *ports;
    size_t nports;
    struct ip_entry *ips;
    size_t nips;
    struct name_entry *names;
    size_t nnames;
};

enum { FILTER_NONE, FILTER_LOCAL, FILTER_REMOTE };
enum { IDX_TCP, IDX_UDP, IDX_DNS };
enum { INCOMING_OFF, INCOMING_MIRROR, INCOMING_STEAL };

struct port_pair {
    int from, to;
};

struct rules {
    int tcp, udp, ignore_localhost;
    int filter_mode;
    struct index idx[3];
    int dns_enabled, dns_filter_mode;
    char **local_names;
    size_t nlocal_names;
    int incoming_mode;
    char *http_filter; /* mirrord's http_filter object as JSON, "" for none */
    struct port_pair *port_mapping, *listen_ports;
    size_t nport_mapping, nlisten_ports;
    int *ignore_ports;
    size_t nignore_ports;
    int ports_only; /* incoming.ports was given: only those */
    int *ports;
    size_t nports;
    int incoming_ignore_localhost;
    char **skip;
    size_t nskip;
    struct port_pair *debugger; /* port ranges a debugger uses on this machine */
    size_t ndebugger;
};

/* 0, or -1 with the line that failed in `why`; `out` is then empty but safe to free. */
int rules_parse(const char *text, struct rules *out, char *why, size_t whylen);
void rules_free(struct rules *r);

int ipkey_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct ipkey *ip, int *port);
int ipkey_parse(const char *text, struct ipkey *ip);
int ipkey_is_loopback(const struct ipkey *ip); /* loopback or unspecified, as ip_kind says */
int ipkey_is_unspecified(const struct ipkey *ip);

/* Does a connection (udp: 0/1) to ip:port go through the target? `names`: what the app
 * resolved that led to this address. */
int rules_outgoing_remote(const struct rules *r, int udp, const struct ipkey *ip, int port,
                          const char *const *names, size_t nnames);
/* Does looking `name` up (service port, 0 if none) go through the target? */
int rules_dns_remote(const struct rules *r, const char *name, int port);
/* Does a stream socket bound to ip:port listen for the target's traffic? */
int rules_incoming_wanted(const struct rules *r, const struct ipkey *ip, int port);
int rules_remote_port(const struct rules *r, int port);  /* port_mapping */
int rules_listen_port(const struct rules *r, int port);  /* listen_ports, or port */
int rules_has_listen_port(const struct rules *r, int port);
/* DebuggerPorts.keeps_local: a debugger's address, bound and reached on this machine */
int rules_debugger_local(const struct rules *r, const struct ipkey *ip, int port);
int rules_skipped(const struct rules *r, const char *exec_name, const char *invoked_as);

#endif
