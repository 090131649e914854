/* A hostile container process for tests/fault/test_robust.py.
 *
 *   robust comm NAME [private-mnt]
 *
 * sets its own comm (what /proc/PID/comm, ps and crashcart show) to NAME with
 * prctl(PR_SET_NAME), which takes any bytes but NUL, terminal escapes included; with
 * "private-mnt" it first moves into a mount namespace of its own (a copy of the
 * container's, made private), so that it is the only process of that namespace.
 * Then it waits, forever, for a signal.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3 || strcmp(argv[1], "comm") != 0) {
        fprintf(stderr, "usage: robust comm NAME [private-mnt]\n");
        return 2;
    }
    if (argc > 3 && strcmp(argv[3], "private-mnt") == 0) {
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
            perror("robust: private mount namespace");
            return 1;
        }
    }
    if (prctl(PR_SET_NAME, argv[2], 0, 0, 0) != 0) {
        perror("robust: PR_SET_NAME");
        return 1;
    }
    for (;;)
        pause();
}
