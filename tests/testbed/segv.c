/* crashcart test fixture: says what it does, then dereferences NULL (SIGSEGV, exit 139). */
#include <stdio.h>

static volatile int *nowhere;

__attribute__((noinline)) static void crash_here(int depth)
{
    if (depth > 0) {
        crash_here(depth - 1);
        return;
    }
    *nowhere = 42;
}

int main(void)
{
    puts("segv: about to crash");
    fflush(stdout);
    crash_here(2);
    return 0;
}
