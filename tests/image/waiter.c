/* A target for the gdb tests: it waits in a function of its own, built with debug info
 * (glibc-dynamic, musl-dynamic and static). The pause(2) system call is made inline, so
 * the stopped PC is in crashcart_wait_here() whatever unwind data the libc has. */
static void __attribute__((noinline)) crashcart_wait_here(void)
{
    for (;;)
        __asm__ volatile("syscall" : : "a"(34) : "rcx", "r11", "memory"); /* pause(2) */
}

int main(void)
{
    crashcart_wait_here();
    return 0;
}
