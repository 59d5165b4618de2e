/*
 * loadgen: the benchmark's compiled load generator (built by bench/run.py with gcc).
 *
 * One single-threaded epoll loop, so that it is cheap next to what it measures; its own
 * CPU time (getrusage) is part of every result. Talks to loopback only: the host must be
 * in 127.0.0.0/8 (checked).
 *
 * Modes (each prints ONE JSON object on stdout at the end; idle prints one per phase):
 *   imap-login  cycles of connect, greeting, "a LOGIN user pass", "b LOGOUT", close
 *   pop3-login  cycles of connect, greeting, USER, PASS, QUIT, close
 *   fetch       one session: LOGIN, SELECT INBOX, K x "FETCH <largest> BODY.PEEK[]"
 *   append      one session: LOGIN, K x "APPEND INBOX {SIZE}", then expunge them (untimed)
 *   idle        N logged-in IMAP sessions held open; protocol on stdin/stdout:
 *               prints {"phase":"ready",...}; reads a line "noop" -> NOOP on every
 *               session, prints {"phase":"noop",...}; reads "close" (or EOF) -> closes all,
 *               prints {"phase":"closed",...}
 *
 * Options: -H host -p port -m mode -c concurrency -d seconds -w warmup-seconds
 *          -u users (1000) -x user-prefix ("user") -P password ("pass") -U fixed-user
 *          -n sessions (idle) -k repetitions (fetch/append) -s append-size-bytes
 *          -t per-step timeout seconds (10) -B source-ip (bind before connect; repeatable)
 *          -N max-cycles (login modes: stop after starting that many cycles; users are
 *             taken in order, so -N 1000 -u 1000 logs every user in once)
 *
 * Login latency = connect() start to the tagged OK of LOGIN (IMAP) / the +OK of PASS (POP3).
 * The login modes also report the median of each phase of a cycle ("phase_p50_us"):
 * connect() start to the greeting, the login command(s) to their answer, LOGOUT/QUIT to
 * its answer; at one client they show which step a target's latency is lost in.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define LINEBUF 8192
#define MAX_SRC 64

enum mode { M_IMAP, M_POP3, M_FETCH, M_APPEND, M_IDLE };

enum state {
    S_FREE = 0,
    S_CONNECTING,
    S_GREETING,
    S_LOGIN,   /* IMAP: LOGIN sent; POP3: PASS sent */
    S_USER,    /* POP3: USER sent */
    S_LOGOUT,  /* LOGOUT/QUIT sent */
    S_IDLE,    /* idle mode: logged in, holding */
    S_NOOP,    /* idle mode: NOOP sent */
};

struct conn {
    int fd;
    enum state st;
    double t_start;
    double t_greet, t_ok;   /* greeting read, login answered: the phases of a cycle */
    int user;
    int len;
    char buf[LINEBUF];
};

static struct {
    const char *host;
    int port;
    enum mode mode;
    int conc;
    double duration, warmup, timeout;
    int users;
    const char *prefix, *password, *fixed_user;
    int sessions, reps;
    long max_cycles;   /* login modes: start at most this many cycles (0 = no limit) */
    long append_size;
    struct in_addr src[MAX_SRC];
    int nsrc;
} opt = {
    .host = "127.0.0.1", .port = 143, .mode = M_IMAP, .conc = 1, .duration = 3,
    .warmup = 0.5, .timeout = 10, .users = 1000, .prefix = "user", .password = "pass",
    .fixed_user = NULL, .sessions = 100, .reps = 3, .append_size = 20L * 1024 * 1024,
};

static int epfd;
static struct sockaddr_in dst;
static int next_user, next_src;
static long started_cycles;

/* results of the login modes */
static uint32_t *lat;          /* microseconds, measured window only */
static size_t nlat, caplat;
static long done_total, done_window, errors, err_connect, err_refused, err_timeout, err_closed;
static char last_error[256];
/* a login cycle's three phases (connect to greeting, login command to its answer,
 * LOGOUT/QUIT to its answer), microseconds, cycles whose login ended in the window */
static uint32_t *phase[3];
static size_t nphase, capphase;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void note_error(const char *what, const char *detail)
{
    errors++;
    snprintf(last_error, sizeof last_error, "%s%s%.120s", what, detail ? ": " : "",
             detail ? detail : "");
}

static double cpu_self_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1e6 +
           ru.ru_stime.tv_usec;
}

static void json_escape(char *out, size_t n, const char *in)
{
    size_t j = 0;
    for (; *in && j + 7 < n; in++) {
        unsigned char c = (unsigned char)*in;
        if (c == '"' || c == '\\') { out[j++] = '\\'; out[j++] = c; }
        else if (c < 0x20) j += snprintf(out + j, n - j, "\\u%04x", c);
        else out[j++] = c;
    }
    out[j] = 0;
}

/* ------------------------------------------------------------------ sockets */
static int open_socket(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.nsrc) {
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr = opt.src[next_src++ % opt.nsrc];
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
    }
    return fd;
}

static int conn_start(struct conn *c)
{
    started_cycles++;
    c->fd = open_socket();
    c->len = 0;
    c->t_start = now();
    if (c->fd < 0) { note_error("socket", strerror(errno)); err_connect++; return -1; }
    int r = connect(c->fd, (struct sockaddr *)&dst, sizeof dst);
    if (r < 0 && errno != EINPROGRESS) {
        note_error("connect", strerror(errno));
        err_connect++;
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->st = S_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    return 0;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) close(c->fd); /* close() also removes it from the epoll set */
    c->fd = -1;
    c->st = S_FREE;
    c->len = 0;
}

static int send_all_nb(struct conn *c, const char *s, size_t n)
{
    /* Commands are tiny: on loopback a fresh socket always has room for them. */
    while (n) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int sendf(struct conn *c, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    return send_all_nb(c, line, (size_t)n);
}

static const char *user_name(int i, char *out, size_t n)
{
    if (opt.fixed_user) snprintf(out, n, "%s", opt.fixed_user);
    else snprintf(out, n, "%s%04d", opt.prefix, i % opt.users);
    return out;
}

/* Samples are kept as microseconds in uint32_t arrays that grow by doubling. */
static uint32_t as_us(double secs)
{
    double us = secs * 1e6;
    return us < 0 ? 0 : us > 4e9 ? 4000000000u : (uint32_t)us;
}

static size_t grown_capacity(size_t cap)
{
    return cap ? cap * 2 : 65536;
}

static uint32_t *resized(uint32_t *a, size_t cap)
{
    a = realloc(a, cap * sizeof *a);
    if (!a) die("out of memory");
    return a;
}

static void record_latency(double t0, double t1, double window_start, double window_end)
{
    done_total++;
    if (t1 < window_start || t1 > window_end) return;
    done_window++;
    if (nlat == caplat) {
        caplat = grown_capacity(caplat);
        lat = resized(lat, caplat);
    }
    lat[nlat++] = as_us(t1 - t0);
}

/* Handle one complete line for a connection in a login/idle mode. Returns 1 when the
 * connection must be closed as finished, -1 on protocol error, 0 to go on. */
static double g_wstart, g_wend;
static long noop_ok, noop_bad;
static void record_phases(const struct conn *c, double t_end);

static int on_line(struct conn *c, const char *line)
{
    char u[64];
    if (opt.mode == M_POP3) {
        int ok = strncmp(line, "+OK", 3) == 0;
        switch (c->st) {
        case S_GREETING:
            if (!ok) { note_error("bad greeting", line); return -1; }
            c->t_greet = now();
            c->st = S_USER;
            return sendf(c, "USER %s\r\n", user_name(c->user, u, sizeof u)) ? -1 : 0;
        case S_USER:
            if (!ok) { note_error("USER refused", line); return -1; }
            c->st = S_LOGIN;
            return sendf(c, "PASS %s\r\n", opt.password) ? -1 : 0;
        case S_LOGIN:
            if (!ok) { note_error("PASS refused", line); return -1; }
            c->t_ok = now();
            record_latency(c->t_start, c->t_ok, g_wstart, g_wend);
            c->st = S_LOGOUT;
            return sendf(c, "QUIT\r\n") ? -1 : 0;
        case S_LOGOUT:
            record_phases(c, now());
            return 1;
        default:
            return 0;
        }
    }
    /* IMAP */
    switch (c->st) {
    case S_GREETING:
        if (strncmp(line, "* OK", 4) != 0) { note_error("bad greeting", line); return -1; }
        c->t_greet = now();
        c->st = S_LOGIN;
        return sendf(c, "a LOGIN %s %s\r\n", user_name(c->user, u, sizeof u), opt.password)
                   ? -1 : 0;
    case S_LOGIN:
        if (line[0] == '*' || line[0] == '+') return 0;
        if (strncmp(line, "a OK", 4) != 0) { note_error("LOGIN refused", line); return -1; }
        if (opt.mode == M_IDLE) { c->st = S_IDLE; return 2; }
        c->t_ok = now();
        record_latency(c->t_start, c->t_ok, g_wstart, g_wend);
        c->st = S_LOGOUT;
        return sendf(c, "b LOGOUT\r\n") ? -1 : 0;
    case S_LOGOUT:
        if (strncmp(line, "b OK", 4) == 0) { record_phases(c, now()); return 1; }
        return 0;
    case S_NOOP:
        if (line[0] == '*') return 0;
        if (strncmp(line, "n OK", 4) == 0) { noop_ok++; c->st = S_IDLE; return 3; }
        noop_bad++;
        note_error("NOOP failed", line);
        c->st = S_IDLE;
        return 3;
    default:
        return 0;
    }
}

static void record_phases(const struct conn *c, double t_end)
{
    if (c->t_ok < g_wstart || c->t_ok > g_wend) return;
    if (nphase == capphase) {
        capphase = grown_capacity(capphase);
        for (int i = 0; i < 3; i++)
            phase[i] = resized(phase[i], capphase);
    }
    phase[0][nphase] = as_us(c->t_greet - c->t_start);
    phase[1][nphase] = as_us(c->t_ok - c->t_greet);
    phase[2][nphase] = as_us(t_end - c->t_ok);
    nphase++;
}

/* Read what is there; feed complete lines. Returns like on_line, or -2 on EOF/error. */
static int on_readable(struct conn *c)
{
    for (int rounds = 0; rounds < 16; rounds++) {
        if (c->len >= LINEBUF - 1) { note_error("line too long", NULL); return -1; }
        ssize_t r = recv(c->fd, c->buf + c->len, LINEBUF - 1 - c->len, 0);
        if (r == 0) return -2;
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -2;
        }
        c->len += (int)r;
        c->buf[c->len] = 0;
        char *p = c->buf;
        char *nl;
        int res = 0;
        while ((nl = memchr(p, '\n', (size_t)(c->buf + c->len - p))) != NULL) {
            *nl = 0;
            if (nl > p && nl[-1] == '\r') nl[-1] = 0;
            res = on_line(c, p);
            p = nl + 1;
            if (res != 0) break;
        }
        int rest = (int)(c->buf + c->len - p);
        memmove(c->buf, p, (size_t)rest);
        c->len = rest;
        if (res != 0) return res;
    }
    return 0;
}

static int connect_done(struct conn *c)
{
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
        note_error("connect", strerror(err));
        if (err == ECONNREFUSED) err_refused++; else err_connect++;
        return -1;
    }
    c->st = S_GREETING;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static void print_rusage_fields(double cpu0)
{
    printf("\"loadgen_cpu_us\":%.0f", cpu_self_us() - cpu0);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (!nlat) return -1;
    size_t i = (size_t)(p * (double)(nlat - 1) + 0.5);
    if (i >= nlat) i = nlat - 1;
    return lat[i];
}

/* ------------------------------------------------------------- login cycles */
static void run_login_cycles(void)
{
    struct conn *cs = calloc((size_t)opt.conc, sizeof *cs);
    if (!cs) die("out of memory");
    for (int i = 0; i < opt.conc; i++) cs[i].fd = -1;
    double cpu0 = cpu_self_us();
    double t0 = now();
    g_wstart = t0 + opt.warmup;
    g_wend = g_wstart + opt.duration;
    double hard_end = g_wend + opt.timeout; /* in-flight cycles may finish until then */
    int active = 0;
    struct epoll_event evs[256];

    for (int i = 0; i < opt.conc && (!opt.max_cycles || started_cycles < opt.max_cycles); i++) {
        cs[i].user = next_user++;
        if (conn_start(&cs[i]) == 0) active++;
    }
    long consecutive_fail = 0;
    while (1) {
        double t = now();
        int starting = t < g_wend && (!opt.max_cycles || started_cycles < opt.max_cycles);
        if (!starting && active == 0) break;
        if (t > hard_end) break;
        /* restart free slots (after failures) while in the window; back off a little */
        if (starting && active < opt.conc) {
            for (int i = 0; i < opt.conc; i++)
                if (cs[i].st == S_FREE) {
                    cs[i].user = next_user++;
                    if (conn_start(&cs[i]) == 0) active++;
                }
        }
        int n = epoll_wait(epfd, evs, 256, 50);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait: %s", strerror(errno)); }
        t = now();
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->st == S_FREE) continue;
            int res = 0;
            if (c->st == S_CONNECTING) {
                if (connect_done(c) < 0) res = -1;
                else if (evs[i].events & EPOLLIN) res = on_readable(c);
            } else {
                res = on_readable(c);
            }
            if (res == -2) {
                if (c->st == S_LOGOUT) res = 1; /* server closed after LOGOUT/QUIT: fine */
                else { note_error("closed by peer", NULL); err_closed++; res = -1; }
            }
            if (res == 0) continue;
            conn_close(c);
            active--;
            if (res < 0) {
                consecutive_fail++;
                if (consecutive_fail > 1000 && done_total == 0) goto out;
            } else {
                consecutive_fail = 0;
            }
            if (t < g_wend && (!opt.max_cycles || started_cycles < opt.max_cycles)) {
                c->user = next_user++;
                if (conn_start(c) == 0) active++;
            }
        }
        /* time out stuck steps */
        for (int i = 0; i < opt.conc; i++)
            if (cs[i].st != S_FREE && t - cs[i].t_start > opt.timeout) {
                note_error("timeout", NULL);
                err_timeout++;
                conn_close(&cs[i]);
                active--;
            }
    }
out:
    for (int i = 0; i < opt.conc; i++)
        if (cs[i].st != S_FREE) conn_close(&cs[i]);
    double elapsed = now() - t0;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double window = opt.duration;
    char esc[300];
    json_escape(esc, sizeof esc, last_error);
    printf("{\"mode\":\"%s\",\"concurrency\":%d,\"window_s\":%.3f,\"elapsed_s\":%.3f,"
           "\"logins_total\":%ld,\"logins_window\":%ld,\"logins_per_s\":%.1f,"
           "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
           "\"errors\":%ld,\"err_connect\":%ld,\"err_refused\":%ld,\"err_timeout\":%ld,"
           "\"err_closed\":%ld,\"last_error\":\"%s\",",
           opt.mode == M_POP3 ? "pop3-login" : "imap-login", opt.conc, window, elapsed,
           done_total, done_window, done_window / window, pct(0.5) / 1000, pct(0.9) / 1000,
           pct(0.99) / 1000, nlat ? lat[nlat - 1] / 1000.0 : -1, errors, err_connect,
           err_refused, err_timeout, err_closed, esc);
    printf("\"phase_p50_us\":[");
    for (int i = 0; i < 3; i++) {
        if (nphase) qsort(phase[i], nphase, sizeof *phase[i], cmp_u32);
        printf("%s%u", i ? "," : "", nphase ? phase[i][nphase / 2] : 0);
    }
    printf("],");
    print_rusage_fields(cpu0);
    printf("}\n");
    fflush(stdout);
}

/* ------------------------------------------------------------- idle sessions */
static int wait_stdin_line(char *out, size_t n)
{
    if (!fgets(out, (int)n, stdin)) return -1;
    out[strcspn(out, "\r\n")] = 0;
    return 0;
}

/* End the held sessions as a client logging out would: LOGOUT on every one, then wait
 * (bounded) for the server to close before closing our end. The server side closing
 * first keeps the proxy's backend connections out of TIME_WAIT on the proxy's side,
 * where 9,000 sessions a target would hold ephemeral ports towards the backend for the
 * next minute, through the next repetition's login tests. */
static void logout_idle(struct conn *cs, int N)
{
    int open_ = 0;
    for (int i = 0; i < N; i++) {
        if (cs[i].st == S_FREE) continue;
        if (sendf(&cs[i], "z LOGOUT\r\n") < 0) { conn_close(&cs[i]); continue; }
        open_++;
    }
    double dl = now() + 10 + N / 1000.0;
    struct epoll_event evs[256];
    while (open_ > 0 && now() < dl) {
        int n = epoll_wait(epfd, evs, 256, 50);
        if (n < 0) { if (errno == EINTR) continue; break; }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->st == S_FREE || c->fd < 0) continue;
            char tmp[4096];
            ssize_t r;
            while ((r = recv(c->fd, tmp, sizeof tmp, MSG_DONTWAIT)) > 0)
                ;   /* BYE and the tagged OK: not looked at */
            if (r == 0 || errno != EAGAIN) { conn_close(c); open_--; }
        }
    }
}

static void run_idle(void)
{
    int N = opt.sessions;
    struct conn *cs = calloc((size_t)N, sizeof *cs);
    if (!cs) die("out of memory");
    for (int i = 0; i < N; i++) cs[i].fd = -1;
    double cpu0 = cpu_self_us();
    double t0 = now();
    g_wstart = 0; g_wend = 1e18;
    int started = 0, inflight = 0, ready = 0, failed = 0;
    struct epoll_event evs[256];
    double deadline = t0 + opt.timeout + N / 200.0; /* bounded: >= 200 logins/s expected */
    while ((ready + failed) < N && now() < deadline) {
        while (inflight < opt.conc && started < N) {
            struct conn *c = &cs[started];
            c->user = started++;
            if (conn_start(c) == 0) inflight++; else failed++;
        }
        int n = epoll_wait(epfd, evs, 256, 50);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait: %s", strerror(errno)); }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->st == S_FREE || c->st == S_IDLE) continue;
            int res = 0;
            if (c->st == S_CONNECTING) {
                if (connect_done(c) < 0) res = -1;
                else if (evs[i].events & EPOLLIN) res = on_readable(c);
            } else res = on_readable(c);
            if (res == -2) { note_error("closed by peer", NULL); err_closed++; res = -1; }
            if (res == 2) {
                inflight--; ready++;
                /* no more events wanted until NOOP; keep it registered for EOF/errors */
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            if (res < 0 || res == 1) { conn_close(c); inflight--; failed++; }
        }
        double t = now();
        for (int i = 0; i < started; i++)
            if (cs[i].st != S_FREE && cs[i].st != S_IDLE && t - cs[i].t_start > opt.timeout) {
                note_error("timeout", NULL);
                err_timeout++;
                conn_close(&cs[i]);
                inflight--; failed++;
            }
    }
    /* anything still not ready by the deadline counts as failed */
    for (int i = 0; i < N; i++)
        if (cs[i].st != S_FREE && cs[i].st != S_IDLE) { conn_close(&cs[i]); failed++; }
    char esc[300];
    json_escape(esc, sizeof esc, last_error);
    printf("{\"phase\":\"ready\",\"sessions\":%d,\"ready\":%d,\"failed\":%d,"
           "\"secs\":%.3f,\"last_error\":\"%s\",", N, ready, failed, now() - t0, esc);
    print_rusage_fields(cpu0);
    printf("}\n");
    fflush(stdout);

    char cmd[64];
    if (wait_stdin_line(cmd, sizeof cmd) == 0 && strcmp(cmd, "noop") == 0) {
        double t1 = now();
        int pending = 0, dead = 0;
        for (int i = 0; i < N; i++) {
            if (cs[i].st != S_IDLE) continue;
            cs[i].t_start = t1;
            /* drop anything unsolicited that arrived while idle */
            cs[i].len = 0;
            if (sendf(&cs[i], "n NOOP\r\n") < 0) { dead++; conn_close(&cs[i]); continue; }
            cs[i].st = S_NOOP;
            pending++;
        }
        double dl = t1 + opt.timeout + N / 1000.0;
        while (pending > 0 && now() < dl) {
            int n = epoll_wait(epfd, evs, 256, 50);
            if (n < 0) { if (errno == EINTR) continue; break; }
            for (int i = 0; i < n; i++) {
                struct conn *c = evs[i].data.ptr;
                if (c->st != S_NOOP) {
                    if (c->st == S_IDLE) {
                        /* readable while idle: EOF or unsolicited data */
                        char tmp[512];
                        ssize_t r = recv(c->fd, tmp, sizeof tmp, MSG_DONTWAIT);
                        if (r == 0 || (r < 0 && errno != EAGAIN)) { conn_close(c); dead++; }
                    }
                    continue;
                }
                int res = on_readable(c);
                if (res == 3) pending--;
                else if (res < 0) { conn_close(c); pending--; dead++; noop_bad++; }
            }
        }
        noop_bad += pending;
        json_escape(esc, sizeof esc, last_error);
        printf("{\"phase\":\"noop\",\"sent\":%ld,\"ok\":%ld,\"failed\":%ld,\"dead\":%d,"
               "\"secs\":%.3f,\"last_error\":\"%s\",",
               noop_ok + noop_bad, noop_ok, noop_bad, dead, now() - t1, esc);
        print_rusage_fields(cpu0);
        printf("}\n");
        fflush(stdout);
        wait_stdin_line(cmd, sizeof cmd); /* "close" or EOF */
        logout_idle(cs, N);
    }
    for (int i = 0; i < N; i++)
        if (cs[i].st != S_FREE) conn_close(&cs[i]);
    printf("{\"phase\":\"closed\",");
    print_rusage_fields(cpu0);
    printf("}\n");
    fflush(stdout);
}

/* -------------------------------------------------- one blocking session */
static int bfd = -1;
static char rbuf[1 << 18];
static size_t rlen, rpos;
static double bdeadline;

static void b_refill(void)
{
    if (rpos == rlen) rpos = rlen = 0;
    if (rlen == sizeof rbuf) {
        memmove(rbuf, rbuf + rpos, rlen - rpos);
        rlen -= rpos;
        rpos = 0;
    }
    struct pollfd p = {.fd = bfd, .events = POLLIN};
    int ms = (int)((bdeadline - now()) * 1000);
    if (ms <= 0 || poll(&p, 1, ms) <= 0) die("timeout waiting for the server");
    ssize_t r = recv(bfd, rbuf + rlen, sizeof rbuf - rlen, 0);
    if (r <= 0) die("server closed the connection (%s)", r < 0 ? strerror(errno) : "EOF");
    rlen += (size_t)r;
}

/* next line (without CRLF) into out */
static void b_line(char *out, size_t n)
{
    for (;;) {
        char *nl = memchr(rbuf + rpos, '\n', rlen - rpos);
        if (nl) {
            size_t l = (size_t)(nl - (rbuf + rpos));
            size_t cp = l < n - 1 ? l : n - 1;
            memcpy(out, rbuf + rpos, cp);
            out[cp] = 0;
            if (cp && out[cp - 1] == '\r') out[cp - 1] = 0;
            rpos += l + 1;
            return;
        }
        b_refill();
    }
}

static void b_skip(long n)
{
    while (n > 0) {
        if (rpos == rlen) b_refill();
        size_t take = rlen - rpos;
        if ((long)take > n) take = (size_t)n;
        rpos += take;
        n -= (long)take;
    }
}

static void b_send(const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        struct pollfd pf = {.fd = bfd, .events = POLLOUT};
        int ms = (int)((bdeadline - now()) * 1000);
        if (ms <= 0 || poll(&pf, 1, ms) <= 0) die("timeout sending to the server");
        ssize_t w = send(bfd, s, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            die("send: %s", strerror(errno));
        }
        s += w;
        n -= (size_t)w;
    }
}

/* send a command, read lines until the tagged reply; die unless OK */
static void b_cmd(const char *tag, const char *cmd)
{
    char line[LINEBUF];
    b_send(cmd, strlen(cmd));
    size_t tl = strlen(tag);
    for (;;) {
        b_line(line, sizeof line);
        if (strncmp(line, tag, tl) == 0 && line[tl] == ' ') {
            if (strncmp(line + tl + 1, "OK", 2) != 0) die("%s failed: %s", cmd, line);
            return;
        }
    }
}

static void b_connect_login(const char *user)
{
    bdeadline = now() + opt.timeout;
    bfd = open_socket();
    if (bfd < 0) die("socket: %s", strerror(errno));
    int r = connect(bfd, (struct sockaddr *)&dst, sizeof dst);
    if (r < 0 && errno != EINPROGRESS) die("connect: %s", strerror(errno));
    struct pollfd p = {.fd = bfd, .events = POLLOUT};
    if (poll(&p, 1, (int)(opt.timeout * 1000)) <= 0) die("connect timeout");
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(bfd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) die("connect: %s", strerror(err));
    char line[LINEBUF];
    b_line(line, sizeof line);
    if (strncmp(line, "* OK", 4) != 0) die("bad greeting: %s", line);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "a LOGIN %s %s\r\n", user, opt.password);
    b_cmd("a", cmd);
}

static void run_fetch(void)
{
    char u[64];
    double cpu0 = cpu_self_us();
    b_connect_login(user_name(0, u, sizeof u));
    b_cmd("s", "s SELECT INBOX\r\n");
    /* find the largest message */
    char line[LINEBUF];
    b_send("z FETCH 1:* RFC822.SIZE\r\n", 25);
    long best = -1, bestseq = -1;
    for (;;) {
        b_line(line, sizeof line);
        long seq, size;
        if (sscanf(line, "* %ld FETCH (RFC822.SIZE %ld)", &seq, &size) == 2) {
            if (size > best) { best = size; bestseq = seq; }
        } else if (strncmp(line, "z ", 2) == 0) {
            if (strncmp(line, "z OK", 4) != 0) die("FETCH sizes: %s", line);
            break;
        }
    }
    if (bestseq < 0) die("empty INBOX");
    double tbest = 1e9, ttotal = 0;
    long total = 0;
    for (int k = 0; k < opt.reps; k++) {
        bdeadline = now() + opt.timeout + 60;
        char cmd[64];
        snprintf(cmd, sizeof cmd, "f FETCH %ld BODY.PEEK[]\r\n", bestseq);
        double t0 = now();
        b_send(cmd, strlen(cmd));
        long lit = -1;
        for (;;) {
            b_line(line, sizeof line);
            char *brace = strrchr(line, '{');
            if (line[0] == '*' && brace && strstr(line, "FETCH")) {
                lit = atol(brace + 1);
                b_skip(lit);
            } else if (strncmp(line, "f ", 2) == 0) {
                if (strncmp(line, "f OK", 4) != 0) die("FETCH: %s", line);
                break;
            }
        }
        double dt = now() - t0;
        if (lit < 0) die("FETCH returned no literal");
        total += lit;
        ttotal += dt;
        if (dt < tbest) tbest = dt;
    }
    b_cmd("b", "b LOGOUT\r\n");
    close(bfd);
    printf("{\"mode\":\"fetch\",\"message_bytes\":%ld,\"reps\":%d,\"bytes\":%ld,"
           "\"secs\":%.6f,\"mb_per_s\":%.1f,\"best_mb_per_s\":%.1f,",
           best, opt.reps, total, ttotal, total / ttotal / 1e6, best / tbest / 1e6);
    print_rusage_fields(cpu0);
    printf("}\n");
}

static void run_append(void)
{
    char u[64];
    long size = opt.append_size;
    char *msg = malloc((size_t)size);
    if (!msg) die("out of memory");
    /* a plain RFC 5322 message: headers, then 78-byte lines */
    int h = snprintf(msg, (size_t)size, "From: bench@example.invalid\r\nTo: %s@example.invalid"
                     "\r\nSubject: bench append\r\nMessage-ID: <bench@example.invalid>\r\n\r\n",
                     user_name(0, u, sizeof u));
    for (long i = h; i < size; i++) msg[i] = (char)('a' + (i % 26));
    for (long i = h + 76; i + 1 < size; i += 78) { msg[i] = '\r'; msg[i + 1] = '\n'; }
    if (size >= 2) { msg[size - 2] = '\r'; msg[size - 1] = '\n'; }

    double cpu0 = cpu_self_us();
    b_connect_login(user_name(0, u, sizeof u));
    double tbest = 1e9, ttotal = 0;
    long total = 0;
    char line[LINEBUF];
    for (int k = 0; k < opt.reps; k++) {
        bdeadline = now() + opt.timeout + 60;
        char cmd[64];
        snprintf(cmd, sizeof cmd, "p APPEND INBOX {%ld}\r\n", size);
        double t0 = now();
        b_send(cmd, strlen(cmd));
        b_line(line, sizeof line);
        if (line[0] != '+') die("APPEND: no continuation: %s", line);
        b_send(msg, (size_t)size);
        b_send("\r\n", 2);
        for (;;) {
            b_line(line, sizeof line);
            if (strncmp(line, "p ", 2) == 0) {
                if (strncmp(line, "p OK", 4) != 0) die("APPEND: %s", line);
                break;
            }
        }
        double dt = now() - t0;
        total += size;
        ttotal += dt;
        if (dt < tbest) tbest = dt;
    }
    /* untimed clean-up: keep the mailbox (and the disk) from growing across runs */
    bdeadline = now() + opt.timeout + 60;
    b_cmd("s", "s SELECT INBOX\r\n");
    b_cmd("d", "d STORE 1:* +FLAGS.SILENT (\\Deleted)\r\n");
    b_cmd("e", "e EXPUNGE\r\n");
    b_cmd("b", "b LOGOUT\r\n");
    close(bfd);
    printf("{\"mode\":\"append\",\"message_bytes\":%ld,\"reps\":%d,\"bytes\":%ld,"
           "\"secs\":%.6f,\"mb_per_s\":%.1f,\"best_mb_per_s\":%.1f,",
           size, opt.reps, total, ttotal, total / ttotal / 1e6, size / tbest / 1e6);
    print_rusage_fields(cpu0);
    printf("}\n");
    free(msg);
}

/* --------------------------------------------------------------------- main */
int main(int argc, char **argv)
{
    int ch;
    const char *mode = "imap-login";
    while ((ch = getopt(argc, argv, "H:p:m:c:d:w:u:x:P:U:n:k:s:t:B:N:")) != -1) {
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'm': mode = optarg; break;
        case 'c': opt.conc = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'u': opt.users = atoi(optarg); break;
        case 'x': opt.prefix = optarg; break;
        case 'P': opt.password = optarg; break;
        case 'U': opt.fixed_user = optarg; break;
        case 'n': opt.sessions = atoi(optarg); break;
        case 'k': opt.reps = atoi(optarg); break;
        case 's': opt.append_size = atol(optarg); break;
        case 't': opt.timeout = atof(optarg); break;
        case 'N': opt.max_cycles = atol(optarg); break;
        case 'B':
            if (opt.nsrc >= MAX_SRC) die("too many -B");
            if (inet_pton(AF_INET, optarg, &opt.src[opt.nsrc]) != 1) die("bad -B %s", optarg);
            if ((ntohl(opt.src[opt.nsrc].s_addr) >> 24) != 127) die("-B must be loopback");
            opt.nsrc++;
            break;
        default: die("bad usage (see the comment at the top of loadgen.c)");
        }
    }
    if (!strcmp(mode, "imap-login")) opt.mode = M_IMAP;
    else if (!strcmp(mode, "pop3-login")) opt.mode = M_POP3;
    else if (!strcmp(mode, "fetch")) opt.mode = M_FETCH;
    else if (!strcmp(mode, "append")) opt.mode = M_APPEND;
    else if (!strcmp(mode, "idle")) opt.mode = M_IDLE;
    else die("unknown mode %s", mode);
    if (opt.conc < 1 || opt.users < 1 || opt.sessions < 0 || opt.reps < 1 || opt.duration <= 0)
        die("bad numbers");

    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &dst.sin_addr) != 1) die("bad host %s", opt.host);
    if ((ntohl(dst.sin_addr.s_addr) >> 24) != 127) die("host must be in 127.0.0.0/8");

    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1: %s", strerror(errno));

    switch (opt.mode) {
    case M_IMAP:
    case M_POP3: run_login_cycles(); break;
    case M_IDLE: run_idle(); break;
    case M_FETCH: run_fetch(); break;
    case M_APPEND: run_append(); break;
    }
    return 0;
}
