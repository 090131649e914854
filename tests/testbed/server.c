/*
 * crashcart-test server: the one program of the fixture images.
 *
 * Serves a small text page on 0.0.0.0:8080 (or argv[2]) from one process, one request at a
 * time, and exits 0 on SIGTERM or SIGINT. argv[1] names the image in the page. It has its
 * own handler because, as PID 1 of a pid namespace, a signal left at SIG_DFL is ignored.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void handle(int conn, const char *name) {
    char req[2048];
    size_t got = 0;
    /* Read until the end of the request head, a full buffer, EOF or the 2 s timeout. */
    while (got < sizeof(req) - 1) {
        ssize_t n = read(conn, req + got, sizeof(req) - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
    }
    char body[256];
    int blen = snprintf(body, sizeof(body), "crashcart-test %s: hello from pid %d\n", name,
                        (int)getpid());
    char head[256];
    int hlen = snprintf(head, sizeof(head),
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n", blen);
    if (write(conn, head, (size_t)hlen) == hlen) (void)!write(conn, body, (size_t)blen);
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "server";
    int port = argc > 2 ? atoi(argv[2]) : 8080;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: accept() must return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) { perror("bind"); return 1; }
    if (listen(fd, 16) < 0) { perror("listen"); return 1; }
    fprintf(stderr, "crashcart-test %s: listening on 0.0.0.0:%d\n", name, port);

    while (!stopping) {
        int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("accept");
            return 1;
        }
        struct timeval tv = {2, 0};
        setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        handle(conn, name);
        close(conn);
    }
    close(fd);
    fprintf(stderr, "crashcart-test %s: stopped\n", name);
    return 0;
}
