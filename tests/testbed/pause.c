/*
 * crashcart test bed's pause: the sandbox process of a CRI pod, built offline (no registry
 * can be reached) and tagged as the CRI's configured sandbox image. Like Kubernetes'
 * pause, it sleeps until SIGTERM/SIGINT and, as PID 1 of a pod that shares its process
 * namespace, reaps the orphans it inherits.
 */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static void on_chld(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) pause();
}
