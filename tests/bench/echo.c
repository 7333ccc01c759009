/* The benchmark's far end: one process, one epoll loop, two listeners on 127.0.0.1.
 *
 *   raw:    every byte that arrives is sent back.
 *   telnet: an RFC 2217 access server whose serial line is a loopback plug.  At accept it
 *           sends DO COM-PORT-OPTION, WILL/DO BINARY, WILL/DO SGA; data (doubled 0xFF
 *           included) is sent back as it came; every COM-PORT-OPTION command is answered
 *           with its code + 100 and the value it carried; other telnet commands are consumed.
 *
 * Written in C so that the far end costs next to nothing next to what is measured, and
 * costs the same whichever relay (vcom or socat) sits in front of it.  Back-pressure is
 * honest: a connection whose peer does not read stops being read.
 *
 * stdout: first "PORTS <raw> <telnet>", then one line per SET-BAUDRATE or SET-CONTROL
 * received, "SET <code> <value> <CLOCK_MONOTONIC ns>", so that the bench can time a
 * program's tcsetattr or TIOCMBIS to its arrival here.  Those lines are dropped when nobody
 * reads them.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { IAC = 255, DONT = 254, DO = 253, WONT = 252, WILL = 251, SB = 250, SE = 240 };
enum { COM_PORT = 44, SET_BAUDRATE = 1, SET_CONTROL = 5, SIGNATURE = 0 };
enum { P_DATA, P_IAC, P_VERB, P_SB, P_SB_IAC };

#define CHUNK 65536
#define SUBNEG_MAX 64

struct conn {
    int fd;
    int telnet;
    int state;
    unsigned char sb[SUBNEG_MAX];
    int sb_len;
    unsigned char *pending; /* what the peer has not taken yet */
    size_t pending_len;
};

static int listener_fd[2];
static int epoll_fd;
static unsigned char in_buf[CHUNK];
static unsigned char out_buf[2 * CHUNK + 4 * SUBNEG_MAX];

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int listen_on_loopback(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 4096) < 0) {
        perror("echo: listen");
        exit(1);
    }
    return fd;
}

static int port_of(int fd)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &len);
    return ntohs(addr.sin_port);
}

static void watch(struct conn *c, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epoll_fd, op, c->fd, &ev);
}

static void drop(struct conn *c)
{
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Send what can go now; keep the rest and stop reading until it is gone. */
static int send_out(struct conn *c, const unsigned char *data, size_t len)
{
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(c->fd, data + sent, len - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            return -1;
        }
        sent += (size_t)n;
    }
    if (sent < len) {
        c->pending = malloc(len - sent);
        memcpy(c->pending, data + sent, len - sent);
        c->pending_len = len - sent;
        watch(c, EPOLLOUT, EPOLL_CTL_MOD);
    }
    return 0;
}

/* The value as a big-endian number: a baud rate is four bytes, a SET-CONTROL value one. */
static void report(int code, const unsigned char *value, int len)
{
    char line[80];
    unsigned number = 0;
    if (len < 1 || len > 4)
        return;
    for (int i = 0; i < len; i++)
        number = number << 8 | value[i];
    int n = snprintf(line, sizeof line, "SET %d %u %lld\n", code, number, now_ns());
    if (write(STDOUT_FILENO, line, (size_t)n) < 0) {
        /* nobody is listening: fine */
    }
}

/* The answer to one COM-PORT-OPTION subnegotiation (c->sb holds option, code, value unescaped). */
static size_t answer(struct conn *c, unsigned char *out)
{
    size_t n = 0;
    if (c->sb_len < 2 || c->sb[0] != COM_PORT)
        return 0;
    int code = c->sb[1];
    const unsigned char *value = c->sb + 2;
    int len = c->sb_len - 2;
    if (code == SET_BAUDRATE || code == SET_CONTROL)
        report(code, value, len);
    out[n++] = IAC;
    out[n++] = SB;
    out[n++] = COM_PORT;
    out[n++] = (unsigned char)(code + 100);
    if (code == SIGNATURE && len == 0) {
        memcpy(out + n, "bench-echo", 10);
        n += 10;
    } else {
        for (int i = 0; i < len; i++) {
            out[n++] = value[i];
            if (value[i] == IAC)
                out[n++] = IAC;
        }
    }
    out[n++] = IAC;
    out[n++] = SE;
    return n;
}

/* Telnet input to output: data as it came (escaped), answers in place. */
static size_t telnet(struct conn *c, const unsigned char *in, size_t len, unsigned char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (c->state == P_DATA) {
            /* Data and doubled IACs go back as they came: find where that run ends (an IAC that is not
             * doubled, or the end) and copy it at once.  Byte by byte, the RFC 2217 side took 2.1 ms of
             * CPU per MB echoed with random data and 2.9-3.0 ms with all 0xFF, against the raw side's
             * 1.3-1.4 ms, on the two CPUs the relays share; in runs, 1.2-1.3 and 1.6-2.0 ms. */
            size_t end = i;
            while (end < len) {
                if (in[end] != IAC) {
                    const unsigned char *iac = memchr(in + end, IAC, len - end);
                    end = iac != NULL ? (size_t)(iac - in) : len;
                } else if (end + 1 < len && in[end + 1] == IAC) {
                    end += 2;
                } else {
                    break;
                }
            }
            memcpy(out + n, in + i, end - i);
            n += end - i;
            if (end == len)
                break;
            i = end;
            c->state = P_IAC;
            continue;
        }
        unsigned char b = in[i];
        switch (c->state) {
        case P_DATA:
            break; /* handled above */
        case P_IAC:
            if (b == IAC) {
                out[n++] = IAC;
                out[n++] = IAC;
                c->state = P_DATA;
            } else if (b >= WILL && b <= DONT) {
                c->state = P_VERB;
            } else if (b == SB) {
                c->sb_len = 0;
                c->state = P_SB;
            } else {
                c->state = P_DATA;
            }
            break;
        case P_VERB:
            c->state = P_DATA;
            break;
        case P_SB:
            if (b == IAC)
                c->state = P_SB_IAC;
            else if (c->sb_len < SUBNEG_MAX)
                c->sb[c->sb_len++] = b;
            break;
        case P_SB_IAC:
            if (b == IAC) {
                if (c->sb_len < SUBNEG_MAX)
                    c->sb[c->sb_len++] = IAC;
                c->state = P_SB;
            } else {
                if (b == SE)
                    n += answer(c, out + n);
                c->state = P_DATA;
            }
            break;
        }
    }
    return n;
}

static void on_readable(struct conn *c)
{
    ssize_t got = recv(c->fd, in_buf, sizeof in_buf, 0);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
        drop(c);
        return;
    }
    if (got < 0)
        return;
    if (!c->telnet) {
        if (send_out(c, in_buf, (size_t)got) < 0)
            drop(c);
        return;
    }
    size_t n = telnet(c, in_buf, (size_t)got, out_buf);
    if (n && send_out(c, out_buf, n) < 0)
        drop(c);
}

static void on_writable(struct conn *c)
{
    ssize_t n = send(c->fd, c->pending, c->pending_len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            drop(c);
        return;
    }
    memmove(c->pending, c->pending + n, c->pending_len - (size_t)n);
    c->pending_len -= (size_t)n;
    if (c->pending_len == 0) {
        free(c->pending);
        c->pending = NULL;
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
    }
}

static void on_accept(int which)
{
    for (;;) {
        int fd = accept4(listener_fd[which], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        c->fd = fd;
        c->telnet = which == 1;
        watch(c, EPOLLIN, EPOLL_CTL_ADD);
        if (c->telnet) {
            static const unsigned char hello[] = {IAC, DO, COM_PORT, IAC, WILL, 0, IAC, DO, 0,
                                                  IAC, WILL, 3, IAC, DO, 3};
            if (send_out(c, hello, sizeof hello) < 0)
                drop(c);
        }
    }
}

int main(void)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    signal(SIGPIPE, SIG_IGN);
    fcntl(STDOUT_FILENO, F_SETFL, fcntl(STDOUT_FILENO, F_GETFL) | O_NONBLOCK);
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < 2; i++) {
        listener_fd[i] = listen_on_loopback();
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        ev.data.u64 = (uint64_t)i;
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener_fd[i], &ev);
    }
    printf("PORTS %d %d\n", port_of(listener_fd[0]), port_of(listener_fd[1]));
    fflush(stdout);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(epoll_fd, events, 256, -1);
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag < 2) {
                on_accept((int)tag);
                continue;
            }
            struct conn *c = events[i].data.ptr;
            if (events[i].events & EPOLLOUT)
                on_writable(c);
            else
                on_readable(c);
        }
    }
}
