#define _GNU_SOURCE
#include "real.h"

#include <dlfcn.h>
#include <stdatomic.h>

#define DEFINE_REAL(ret, name, args) ret(*real_##name) args;
REAL_FUNCTIONS(DEFINE_REAL)
#undef DEFINE_REAL

static atomic_int looked_up;

void real_init(void) {
    if (atomic_load_explicit(&looked_up, memory_order_acquire))
        return;
    /* two threads may both look up: they store the same pointers */
#define LOOKUP(ret, name, args) real_##name = (ret(*) args)dlsym(RTLD_NEXT, #name);
    REAL_FUNCTIONS(LOOKUP)
#undef LOOKUP
    atomic_store_explicit(&looked_up, 1, memory_order_release);
}
