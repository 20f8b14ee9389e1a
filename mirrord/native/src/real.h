/* The libc functions the relay hooks, as libc itself provides them (dlsym RTLD_NEXT).
 * The relay's own code calls these, never the hooked names. */
#ifndef MIRRORD_REAL_H
#define MIRRORD_REAL_H

#include <netdb.h>
#include <spawn.h>
#include <sys/socket.h>

#define REAL_FUNCTIONS(X)                                                                    \
    X(int, connect, (int, const struct sockaddr *, socklen_t))                               \
    X(int, bind, (int, const struct sockaddr *, socklen_t))                                  \
    X(int, listen, (int, int))                                                               \
    X(int, accept, (int, struct sockaddr *, socklen_t *))                                    \
    X(int, accept4, (int, struct sockaddr *, socklen_t *, int))                              \
    X(int, getsockname, (int, struct sockaddr *, socklen_t *))                               \
    X(int, getpeername, (int, struct sockaddr *, socklen_t *))                               \
    X(ssize_t, sendto, (int, const void *, size_t, int, const struct sockaddr *, socklen_t)) \
    X(ssize_t, recvfrom, (int, void *, size_t, int, struct sockaddr *, socklen_t *))         \
    X(ssize_t, sendmsg, (int, const struct msghdr *, int))                                   \
    X(ssize_t, recvmsg, (int, struct msghdr *, int))                                         \
    X(int, close, (int))                                                                     \
    X(int, dup, (int))                                                                       \
    X(int, dup2, (int, int))                                                                 \
    X(int, dup3, (int, int, int))                                                            \
    X(int, fcntl, (int, int, ...))                                                           \
    X(int, getaddrinfo,                                                                      \
      (const char *, const char *, const struct addrinfo *, struct addrinfo **))             \
    X(void, freeaddrinfo, (struct addrinfo *))                                               \
    X(struct hostent *, gethostbyname, (const char *))                                       \
    X(int, gethostbyname_r,                                                                  \
      (const char *, struct hostent *, char *, size_t, struct hostent **, int *))            \
    X(int, execve, (const char *, char *const[], char *const[]))                             \
    X(int, execvpe, (const char *, char *const[], char *const[]))                            \
    X(int, posix_spawn,                                                                      \
      (pid_t *, const char *, const posix_spawn_file_actions_t *, const posix_spawnattr_t *, \
       char *const[], char *const[]))                                                        \
    X(int, posix_spawnp,                                                                     \
      (pid_t *, const char *, const posix_spawn_file_actions_t *, const posix_spawnattr_t *, \
       char *const[], char *const[]))

#define DECLARE_REAL(ret, name, args) extern ret(*real_##name) args;
REAL_FUNCTIONS(DECLARE_REAL)
#undef DECLARE_REAL

/* Look every real function up (idempotent; hooks call it before the first use). */
void real_init(void);

#endif
