/* The relay's life in a process: it starts with the process (constructor), follows fork()
 * (the child gets its own link) and execve() (the session's variables survive an
 * environment the app cleared), and stays out of processes named in skip_processes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "real.h"
#include "relay.h"

atomic_int relay_state = RELAY_OFF;
struct rules relay_rules;
const char *relay_socket_path, *relay_token;
static int debug;
static int started;

#define RULES_ENV "MIRRORD_RELAY_RULES"
#define HOOK_DIR_ENV "MIRRORD_HOOK_DIR"

/* "NAME=value" of every session variable, copied at start (execve may get an envp
 * without them); LD_PRELOAD and PYTHONPATH are merged rather than replaced. */
#define SESSION_MAX 64
static char *session[SESSION_MAX];
static size_t nsession;
static char *preload;  /* our LD_PRELOAD entries, as the process got them */
static char *hook_dir; /* the Python hook's folder, for PYTHONPATH */

extern char **environ;

EXPORT int mirrord_relay_state(void) { return atomic_load(&relay_state); }

/* The Python layer takes this process's sockets (a debugger runs in it): every hook
 * passes straight through from now on; exec still hands the session on. */
EXPORT int mirrord_relay_stand_down(void) {
    int on = RELAY_ON;
    atomic_compare_exchange_strong(&relay_state, &on, RELAY_STOOD_DOWN);
    return atomic_load(&relay_state);
}

int relay_debug(void) { return debug; }

void relay_log(const char *fmt, ...) {
    char line[512];
    int n = snprintf(line, sizeof line, "mirrord: ");
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    int saved = errno;
    ssize_t ignored = write(2, line, (size_t)n);
    (void)ignored;
    errno = saved;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int skipped(const char *invoked_as) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    return rules_skipped(&relay_rules, n > 0 ? base_name(exe) : NULL,
                         invoked_as ? base_name(invoked_as) : NULL);
}

static void save_session(char **envp) {
    for (char **e = envp; e && *e && nsession < SESSION_MAX; e++)
        if (!strncmp(*e, "MIRRORD_", 8))
            session[nsession++] = strdup(*e);
    const char *p = getenv("LD_PRELOAD");
    preload = p ? strdup(p) : NULL;
    const char *h = getenv(HOOK_DIR_ENV);
    hook_dir = h && *h ? strdup(h) : NULL;
}

static void fork_prepare(void) {
    names_fork_prepare();
    chan_fork_prepare();
    pthread_mutex_lock(&fd_lock);
}

static void fork_parent(void) {
    pthread_mutex_unlock(&fd_lock);
    chan_fork_parent();
    names_fork_parent();
}

static void fork_child(void) {
    fd_after_fork_child();
    names_after_fork_child();
    chan_after_fork_child();
    if (atomic_load(&relay_state) != RELAY_OFF)
        chan_warm(0); /* as at start: the child's presence keeps the intproxy alive */
}

__attribute__((constructor)) static void relay_start(int argc, char **argv, char **envp) {
    (void)argc;
    real_init();
    if (started)
        return;
    started = 1;
    relay_socket_path = getenv("MIRRORD_INTPROXY_SOCKET");
    if (!relay_socket_path || !*relay_socket_path)
        return; /* not in a session: every hook passes straight through */
    relay_token = getenv("MIRRORD_PROXY_TOKEN");
    relay_token = relay_token ? strdup(relay_token) : "";
    relay_socket_path = strdup(relay_socket_path);
    debug = getenv("MIRRORD_RELAY_DEBUG") != NULL;
    save_session(envp ? envp : environ);
    char why[160];
    if (rules_parse(getenv(RULES_ENV), &relay_rules, why, sizeof why)) {
        relay_log("native relay off: %s in %s", why, RULES_ENV);
        return;
    }
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    int skip = skipped(argv && argc > 0 ? argv[0] : NULL);
    atomic_store(&relay_state, skip ? RELAY_SKIPPED : RELAY_ON);
    chan_warm(1);
}

/* ------------------------------------------------------------------ exec */

static int has_entry(const char *list, const char *entry, char sep) {
    size_t n = strlen(entry);
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, sep);
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, entry, n))
            return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static const char *lookup(char *const *envp, const char *name, size_t *at) {
    size_t n = strlen(name);
    for (size_t i = 0; envp && envp[i]; i++)
        if (!strncmp(envp[i], name, n) && envp[i][n] == '=') {
            *at = i;
            return envp[i] + n + 1;
        }
    return NULL;
}

static size_t env_count(char *const *envp) {
    size_t n = 0;
    while (envp && envp[n])
        n++;
    return n;
}

/* The environment a child gets: `envp` plus whatever session variable it lacks, our
 * library in LD_PRELOAD and the hook in PYTHONPATH. Built in `out` (caller's stack: this
 * runs between vfork() and exec, where the heap is the parent's) with room for
 * `env_count(envp) + SESSION_MAX + 3` pointers; strings go to `text`. Returns `out`, or
 * `envp` itself when nothing is missing. */
static char *const *session_env(char *const *envp, char **out, char *text, size_t text_len) {
    if (!started || !relay_socket_path)
        return envp;
    size_t n = env_count(envp), at;
    int changed = 0;
    for (size_t i = 0; i < n; i++)
        out[i] = envp[i];
    out[n] = NULL;
    for (size_t i = 0; i < nsession; i++) {
        size_t name_len = strcspn(session[i], "=");
        char name[128];
        if (name_len >= sizeof name)
            continue;
        memcpy(name, session[i], name_len);
        name[name_len] = 0;
        if (!lookup(out, name, &at)) {
            out[n++] = session[i];
            out[n] = NULL;
            changed = 1;
        }
    }
    const char *current;
    if (preload) {
        current = lookup(out, "LD_PRELOAD", &at);
        /* our entries first (an ASan runtime must come first of all), then theirs */
        char merged[4096];
        size_t used = (size_t)snprintf(merged, sizeof merged, "LD_PRELOAD=%s", preload);
        int missing = !current;
        for (const char *p = preload; p && *p && current;) {
            const char *end = strpbrk(p, ": ");
            char entry[1024];
            size_t len = end ? (size_t)(end - p) : strlen(p);
            if (len && len < sizeof entry) {
                memcpy(entry, p, len);
                entry[len] = 0;
                if (!has_entry(current, entry, ':') && !has_entry(current, entry, ' '))
                    missing = 1;
            }
            p = end ? end + 1 : NULL;
        }
        if (missing && current && *current && used < sizeof merged)
            used += (size_t)snprintf(merged + used, sizeof merged - used, ":%s", current);
        if (missing && used < sizeof merged && used + 1 <= text_len) {
            memcpy(text, merged, used + 1);
            if (current)
                out[at] = text;
            else
                out[n++] = text;
            text += used + 1;
            text_len -= used + 1;
            changed = 1;
        }
    }
    out[n] = NULL;
    if (hook_dir) {
        current = lookup(out, "PYTHONPATH", &at);
        if (!current || !has_entry(current, hook_dir, ':')) {
            int len = snprintf(text, text_len, "PYTHONPATH=%s%s%s", hook_dir,
                               current && *current ? ":" : "", current ? current : "");
            if (len > 0 && (size_t)len < text_len) {
                if (current)
                    out[at] = text;
                else
                    out[n++] = text;
                changed = 1;
            }
        }
    }
    out[n] = NULL;
    return changed ? out : envp;
}

/* The slots live on the stack for any usual environment; a huge one goes to the heap
 * (a thread with a small stack must not overflow), which a vfork child may still use. */
#define STACK_SLOTS 512
#define WITH_SESSION_ENV(envp, fixed)                                                        \
    size_t fixed##_room = env_count(envp) + SESSION_MAX + 4;                                \
    char *fixed##_stack[STACK_SLOTS];                                                        \
    char **fixed##_slots = fixed##_room <= STACK_SLOTS ? fixed##_stack                      \
                                                        : malloc(fixed##_room * sizeof(char *)); \
    char fixed##_text[8192];                                                                 \
    char *const *fixed = fixed##_slots ? session_env(envp, fixed##_slots, fixed##_text,      \
                                                     sizeof fixed##_text)                    \
                                       : envp

/* after a failed exec (a successful one never returns) */
#define DONE_SESSION_ENV(fixed, rc)                                                          \
    do {                                                                                     \
        int saved_ = errno;                                                                  \
        if (fixed##_slots != fixed##_stack)                                                  \
            free(fixed##_slots);                                                             \
        errno = saved_;                                                                      \
        return rc;                                                                           \
    } while (0)

EXPORT int execve(const char *path, char *const argv[], char *const envp[]) {
    real_init();
    WITH_SESSION_ENV(envp, env);
    int rc = real_execve(path, argv, env);
    DONE_SESSION_ENV(env, rc);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[]) {
    real_init();
    WITH_SESSION_ENV(envp, env);
    int rc = real_execvpe(file, argv, env);
    DONE_SESSION_ENV(env, rc);
}

EXPORT int execv(const char *path, char *const argv[]) { return execve(path, argv, environ); }

EXPORT int execvp(const char *file, char *const argv[]) {
    return execvpe(file, argv, environ);
}

/* execl* take their arguments inline: gather them, then as execve/execvpe */
#define GATHER_ARGS(first, ap, args)                                                         \
    size_t count = 1;                                                                        \
    va_start(ap, first);                                                                     \
    while (va_arg(ap, char *))                                                               \
        count++;                                                                             \
    va_end(ap);                                                                              \
    char *args[count + 1];                                                                   \
    va_start(ap, first);                                                                     \
    args[0] = (char *)first;                                                                 \
    for (size_t i = 1; i <= count; i++)                                                      \
        args[i] = va_arg(ap, char *);

EXPORT int execl(const char *path, const char *arg, ...) {
    va_list ap;
    GATHER_ARGS(arg, ap, args);
    va_end(ap);
    return execve(path, args, environ);
}

EXPORT int execlp(const char *file, const char *arg, ...) {
    va_list ap;
    GATHER_ARGS(arg, ap, args);
    va_end(ap);
    return execvpe(file, args, environ);
}

EXPORT int execle(const char *path, const char *arg, ...) {
    va_list ap;
    GATHER_ARGS(arg, ap, args);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return execve(path, args, envp);
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    real_init();
    WITH_SESSION_ENV(envp, env);
    int rc = real_posix_spawn(pid, path, actions, attr, argv, env);
    DONE_SESSION_ENV(env, rc);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    real_init();
    WITH_SESSION_ENV(envp, env);
    int rc = real_posix_spawnp(pid, file, actions, attr, argv, env);
    DONE_SESSION_ENV(env, rc);
}
