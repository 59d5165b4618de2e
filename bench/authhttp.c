/*
 * authhttp: the auth_http endpoint for the nginx mail target (built by bench/run.py).
 *
 * Answers every request at once with "Auth-Status: OK" and the backend's address, so the
 * auth step costs nginx one loopback HTTP round trip and nothing else. Single-threaded
 * epoll; nginx's mail auth client speaks HTTP/1.0 and closes after each answer.
 *
 *   authhttp LISTEN_IP LISTEN_PORT BACKEND_IP IMAP_PORT POP3_PORT
 *
 * The backend port is chosen by the request's "Auth-Protocol: imap|pop3" header.
 * Listens on loopback only (checked).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536
#define BUFSZ 4096

struct req { int len; char buf[BUFSZ]; };
static struct req *reqs[MAXFD];

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: authhttp LISTEN_IP LISTEN_PORT BACKEND_IP IMAP_PORT POP3_PORT\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1 || (ntohl(sa.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "authhttp: listen address must be in 127.0.0.0/8\n");
        return 2;
    }
    char ok_imap[256], ok_pop3[256];
    int l_imap = snprintf(ok_imap, sizeof ok_imap,
                          "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: %s\r\n"
                          "Auth-Port: %s\r\n\r\n", argv[3], argv[4]);
    int l_pop3 = snprintf(ok_pop3, sizeof ok_pop3,
                          "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: %s\r\n"
                          "Auth-Port: %s\r\n\r\n", argv[3], argv[5]);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 4096) < 0) {
        fprintf(stderr, "authhttp: bind/listen: %s\n", strerror(errno));
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    fprintf(stderr, "authhttp: listening on %s:%s\n", argv[1], argv[2]);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; return 1; }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) break;
                    if (c >= MAXFD) { close(c); continue; }
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            struct req *r = reqs[fd];
            if (!r) { r = reqs[fd] = calloc(1, sizeof *r); if (!r) return 1; }
            ssize_t got = recv(fd, r->buf + r->len, BUFSZ - 1 - r->len, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            int done = 0;
            if (got <= 0 || r->len + got >= BUFSZ - 1) done = 1;
            else {
                r->len += (int)got;
                r->buf[r->len] = 0;
                if (strstr(r->buf, "\r\n\r\n")) {
                    const char *resp = ok_imap;
                    int rl = l_imap;
                    if (strcasestr(r->buf, "\nAuth-Protocol: pop3")) { resp = ok_pop3; rl = l_pop3; }
                    /* tiny answer on a fresh loopback socket: it fits the send buffer */
                    (void)!send(fd, resp, (size_t)rl, MSG_NOSIGNAL);
                    done = 1;
                }
            }
            if (done) {
                r->len = 0;
                close(fd);
            }
        }
    }
}
