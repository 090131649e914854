/* /bin/bash of the fault suite's tiny toolbox: busybox has no "bash" applet, and crashcart
 * runs /bin/bash (session shell) or /dev/crashcart/bin/bash (sideload -e). Drops bash-only
 * options (--rcfile FILE, --login, --noprofile) and runs busybox sh with the rest. */
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char *out[argc + 3];
    int n = 0;
    out[n++] = "sh";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rcfile") == 0 && i + 1 < argc) {
            i++;
            continue;
        }
        if (strcmp(argv[i], "--login") == 0 || strcmp(argv[i], "--noprofile") == 0)
            continue;
        out[n++] = argv[i];
    }
    out[n] = 0;
    execv("/dev/crashcart/bin/busybox", out);
    execv("/bin/busybox", out);
    return 127;
}
