/* A native client for the relay's tests, built with AddressSanitizer by the test: every
 * call the relay hooks, made the way C programs make them. Prints one "key value" line
 * per finding.
 *   native_client HOST IP   (HOST: the backend's staging name, IP: its address) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *host;

static void fail(const char *what) {
    printf("error %s: %s\n", what, strerror(errno));
    exit(1);
}

/* GET `path` over a connected socket; returns the body (static buffer) */
static const char *get(int fd, const char *path) {
    static __thread char buf[8192];
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n)
        fail("write");
    size_t got = 0;
    ssize_t k;
    while ((k = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)k;
    if (k < 0)
        snprintf(buf, sizeof buf, "read failed: %s", strerror(errno));
    else
        buf[got] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    return body ? body + 4 : buf;
}

static void peer_of(int fd, char *out, size_t cap) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char ip[64];
    if (getpeername(fd, (struct sockaddr *)&ss, &len))
        fail("getpeername");
    if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof ip);
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
    snprintf(out, cap, "%s:%d", ip, ntohs(((struct sockaddr_in *)&ss)->sin_port));
}

/* resolve, connect without blocking (as curl and libpq do), GET */
static const char *fetch(const char *path, char *peer, size_t cap) {
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(host, "8080", &hints, &res);
    if (rc) {
        printf("error getaddrinfo: %s\n", gai_strerror(rc));
        exit(1);
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_NONBLOCK, 0);
    if (connect(fd, res->ai_addr, res->ai_addrlen) && errno != EINPROGRESS)
        fail("connect");
    freeaddrinfo(res);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof err;
    if (poll(&p, 1, 10000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) || err)
        fail("poll");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    if (peer)
        peer_of(fd, peer, cap);
    const char *body = get(fd, path);
    close(fd);
    return body;
}

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < 5; i++) {
        const char *body = fetch("/thread", NULL, 0);
        if (!strstr(body, "\"/thread\"")) {
            printf("thread_body %.200s\n", body);
            return (void *)1;
        }
    }
    return NULL;
}

static void udp(const char *ip) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9999)};
    inet_pton(AF_INET, ip, &to.sin_addr);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (sendto(fd, "one", 3, 0, (struct sockaddr *)&to, sizeof to) != 3)
        fail("sendto");
    char buf[64], from_ip[64];
    struct sockaddr_in from;
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &len);
    if (n < 0)
        fail("recvfrom");
    buf[n] = 0;
    inet_ntop(AF_INET, &from.sin_addr, from_ip, sizeof from_ip);
    printf("udp_recvfrom %s from %s:%d\n", buf, from_ip, ntohs(from.sin_port));
    /* the same through sendmsg/recvmsg */
    struct iovec iov = {.iov_base = "two", .iov_len = 3};
    struct msghdr msg = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1};
    if (sendmsg(fd, &msg, 0) != 3)
        fail("sendmsg");
    struct iovec in = {.iov_base = buf, .iov_len = sizeof buf - 1};
    struct msghdr back = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &in, .msg_iovlen = 1};
    n = recvmsg(fd, &back, 0);
    if (n < 0)
        fail("recvmsg");
    buf[n] = 0;
    inet_ntop(AF_INET, &from.sin_addr, from_ip, sizeof from_ip);
    printf("udp_recvmsg %s from %s:%d\n", buf, from_ip, ntohs(from.sin_port));
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    host = argv[1];
    char peer[128];
    const char *body = fetch("/native", peer, sizeof peer);
    printf("tcp_body %s\n", strstr(body, "\"/native\"") ? "ok" : body);
    printf("tcp_peer %s\n", peer);
    if (argc == 4) /* the exec'd child: one request is the proof */
        return 0;

    /* blocking, to the target's loopback by address */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_port = htons(9090)};
    inet_pton(AF_INET, "127.0.0.1", &lo.sin_addr);
    if (connect(fd, (struct sockaddr *)&lo, sizeof lo))
        fail("connect loopback");
    int copy = dup(fd), moved = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    dup2(copy, 200);
    char a[128], b[128], c[128];
    peer_of(copy, a, sizeof a);
    peer_of(moved, b, sizeof b);
    peer_of(200, c, sizeof c);
    printf("dup_peers %s %s %s\n", a, b, c);
    close(copy);
    close(moved);
    close(200);
    printf("loopback_body %s\n", get(fd, "/"));
    close(fd);

    struct hostent *he = gethostbyname(host);
    char ip[64] = "none";
    if (he)
        inet_ntop(AF_INET, he->h_addr_list[0], ip, sizeof ip);
    printf("gethostbyname %s\n", ip);

    udp(argv[2]);

    pthread_t threads[8];
    for (int i = 0; i < 8; i++)
        pthread_create(&threads[i], NULL, worker, NULL);
    int bad = 0;
    for (int i = 0; i < 8; i++) {
        void *r;
        pthread_join(threads[i], &r);
        bad += r != NULL;
    }
    printf("threads %s\n", bad ? "failed" : "ok");

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        const char *child = fetch("/forked", NULL, 0);
        printf("fork_child %s\n", strstr(child, "\"/forked\"") ? "ok" : child);
        fflush(stdout);
        /* and exec with a cleared environment: the session's variables come back */
        char *args[] = {argv[0], argv[1], argv[2], "exec'd", NULL};
        char *env[] = {"ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0", NULL};
        execve("/proc/self/exe", args, env);
        fail("execve");
    }
    int status;
    waitpid(pid, &status, 0);
    printf("child_exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
