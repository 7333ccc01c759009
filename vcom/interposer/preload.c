/*
 * vcom interposer library: a UART's termios, modem lines and break for
 * programs on vcom ports.
 *
 * Preloaded into a program (LD_PRELOAD, or /etc/ld.so.preload with
 * `vcom wrap-all on`), it catches, on vcom ports only:
 *   tcgetattr, tcsetattr, tcsendbreak, tcdrain, tcflush, and ioctl with
 *   TCGETS, TCSETS, TCSETSW, TCSETSF, their termios2 forms,
 *   TIOCMGET/SET/BIS/BIC, TIOCSBRK, TIOCCBRK, TCSBRK, TCSBRKP, TIOCMIWAIT,
 *   TIOCGICOUNT, TIOCOUTQ and TCFLSH,
 * and hands them to the vcom manager over its Unix socket, which answers as
 * a UART would (exact data bits and parity, modem lines, break) and forwards
 * them to the remote port.  The protocol is in vcom/interposer/protocol.py.
 *
 * This library may be loaded into every process of the machine, so:
 *  - it depends on nothing but libc, prints nothing and starts nothing (no
 *    constructor); its one piece of state is the connection of a process
 *    that has used a vcom port (see ask());
 *  - on any other fd it adds one check at most: a vcom port carries a tag in
 *    two control characters of its termios (c_cc[17] = 'v', c_cc[18] = 'c',
 *    slots the kernel does not use), read from what tcgetattr returns anyway,
 *    or with one TCGETS2 for the rarer calls;
 *  - when the manager cannot be reached or answers "no", the call goes to the
 *    C library unchanged: the program gets what it would get without it;
 *  - errno is left as the program would see it without the library.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define DEFAULT_SOCKET "/run/vcom/interposer.sock"

/* The kernel's struct termios and struct termios2 (asm-generic/termbits.h); <asm/termbits.h> cannot be
   included next to glibc's <termios.h>. */
#define K_NCCS 19
struct k_termios {
    uint32_t c_iflag, c_oflag, c_cflag, c_lflag;
    uint8_t c_line;
    uint8_t c_cc[K_NCCS];
};
struct k_termios2 {
    uint32_t c_iflag, c_oflag, c_cflag, c_lflag;
    uint8_t c_line;
    uint8_t c_cc[K_NCCS];
    uint32_t c_ispeed, c_ospeed;
};
struct k_icount {
    int cts, dsr, rng, dcd, rx, tx, frame, overrun, parity, brk, buf_overrun;
    int reserved[9];
};

#define VC_TCGETS2 _IOR('T', 0x2A, struct k_termios2)
#define VC_TCSETS2 _IOW('T', 0x2B, struct k_termios2)
#define VC_TCSETSW2 _IOW('T', 0x2C, struct k_termios2)
#define VC_TCSETSF2 _IOW('T', 0x2D, struct k_termios2)
#ifndef TIOCMIWAIT
#define TIOCMIWAIT 0x545C
#endif
#ifndef TIOCGICOUNT
#define TIOCGICOUNT 0x545D
#endif

typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef int (*tcgetattr_fn)(int, struct termios *);
typedef int (*tcsetattr_fn)(int, int, const struct termios *);
typedef int (*tcsendbreak_fn)(int, int);
typedef int (*tcdrain_fn)(int);
typedef int (*tcflush_fn)(int, int);

static void *next_symbol(void **slot, const char *name)
{
    void *fn = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (fn == NULL) {
        fn = dlsym(RTLD_NEXT, name);
        __atomic_store_n(slot, fn, __ATOMIC_RELEASE);
    }
    return fn;
}

static void *real_ioctl_p, *real_tcgetattr_p, *real_tcsetattr_p, *real_tcsendbreak_p, *real_tcdrain_p,
    *real_tcflush_p;
#define REAL(type, name) ((type)next_symbol(&real_##name##_p, #name))

static int tagged(const unsigned char *cc)
{
    return cc[17] == 'v' && cc[18] == 'c';
}

/* Whether fd is a vcom port (its termios carries the tag); its device number in *rdev. */
static int vcom_port(int fd, unsigned long long *rdev)
{
    int saved = errno;
    struct k_termios2 t;
    struct stat st;
    int yes = REAL(ioctl_fn, ioctl)(fd, VC_TCGETS2, &t) == 0 && tagged(t.c_cc) && fstat(fd, &st) == 0 &&
              S_ISCHR(st.st_mode);
    if (yes)
        *rdev = (unsigned long long)st.st_rdev;
    errno = saved;
    return yes;
}

enum answer { ANSWER_NONE, ANSWER_OK, ANSWER_ERR };

/*
 * The connection to the manager is kept for the process's next calls: programs make their termios
 * calls in runs (pyserial's open alone makes half a dozen), and a connection per request cost an accept
 * and a credential check each time, most of the time a program's change took to reach the wire.
 *
 * That is the library's only state, and it is guarded:
 *  - before each use the descriptor is checked to be still the socket it was (device and inode): a
 *    program may close descriptors it does not know about (daemons close them all) and reuse the number;
 *  - after a fork the child makes its own connection (the manager checks who connected) and closes its
 *    copy of the parent's;
 *  - one thread at a time uses it (an atomic flag, no lock: a signal handler may call tcgetattr too);
 *    a call made meanwhile (another thread, a handler, a thread waiting in TIOCMIWAIT) connects for
 *    itself alone, as every call did before;
 *  - anything out of the ordinary (a timeout, EINTR, a short answer) drops it: an answer still on its
 *    way must never be read as the answer to the next request.
 */
static int kept_fd = -1, kept_busy;
static pid_t kept_pid;
static dev_t kept_dev;
static ino_t kept_ino;
static long kept_timeout_ms = -1;

static int same_socket(int fd, dev_t dev, ino_t ino)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev && st.st_ino == ino;
}

static void forget_kept(int close_it)
{
    if (kept_fd >= 0 && close_it && same_socket(kept_fd, kept_dev, kept_ino))
        close(kept_fd);
    kept_fd = -1;
}

/* A connected socket with its header sent; -1 when there is no manager. */
static int connect_manager(void)
{
    const char *path = secure_getenv("VCOM_INTERPOSER");
    if (path == NULL || *path == '\0')
        path = DEFAULT_SOCKET;
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return -1;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    struct timeval send_tv = {5, 0}; /* a stuck manager must not hang the program for ever */
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &send_tv, sizeof send_tv);
    char header[48];
    int len = snprintf(header, sizeof header, "vcom1 preload %ld\n", (long)getpid());
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0 || send(s, header, len, MSG_NOSIGNAL) != len) {
        close(s);
        return -1;
    }
    return s;
}

/* timeout_ms 0: no timeout.  Set only when it changes, one system call saved per request. */
static void receive_timeout(int s, long timeout_ms, long *current)
{
    if (*current == timeout_ms)
        return;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    *current = timeout_ms;
}

enum exchange { EXCHANGED, NOT_SENT, BROKEN, INTERRUPTED };

/* Send one request line and read one answer line into buf (without the newline). */
static enum exchange exchange(int s, const char *request, char *buf, size_t size)
{
    size_t len = strlen(request);
    if (len + 1 >= size)
        return BROKEN;
    memcpy(buf, request, len);
    buf[len] = '\n';
    if (send(s, buf, len + 1, MSG_NOSIGNAL) != (ssize_t)(len + 1))
        return NOT_SENT;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(s, buf + n, size - 1 - n);
        if (r < 0 && errno == EINTR)
            return INTERRUPTED;
        if (r == 0 && n == 0)
            return NOT_SENT; /* closed before it answered: it had not read the request */
        if (r <= 0)
            return BROKEN;
        n += (size_t)r;
        buf[n] = '\0';
        char *end = strchr(buf, '\n');
        if (end != NULL) {
            if (end != buf + n - 1)
                return BROKEN; /* one request, one line: more means we are out of step */
            *end = '\0';
            return EXCHANGED;
        }
        if (n == size - 1)
            return BROKEN;
    }
}

/*
 * One request to the manager: "VERB RDEV ARGS".  ANSWER_OK with the values after "ok " in out,
 * ANSWER_ERR with the errno in *err, ANSWER_NONE when the kernel should have the call (no manager,
 * not its port, not allowed).  timeout_ms 0: wait as long as the manager takes: a change waits until
 * the bytes written before it have left (back-pressure, as for write()), TIOCMIWAIT until a line
 * changes; a signal then ends the wait with EINTR, as it does for the ioctl.  Reads of state use a
 * timeout, so that a stuck manager cannot hang a program that only looks.
 */
static enum answer ask(const char *request, long timeout_ms, char *out, size_t out_size, int *err)
{
    int saved = errno;
    enum answer result = ANSWER_NONE;
    char buf[320];
    enum exchange how = BROKEN;
    if (__atomic_exchange_n(&kept_busy, 1, __ATOMIC_ACQUIRE) == 0) {
        pid_t pid = getpid();
        if (kept_fd >= 0 && (kept_pid != pid || !same_socket(kept_fd, kept_dev, kept_ino)))
            forget_kept(kept_pid != pid); /* a fork's copy is closed; a number the program reused is not */
        for (int fresh = kept_fd < 0; fresh <= 1; fresh++) {
            if (fresh) {
                struct stat st;
                kept_fd = connect_manager();
                if (kept_fd < 0 || fstat(kept_fd, &st) != 0) {
                    forget_kept(1);
                    break;
                }
                kept_pid = pid, kept_dev = st.st_dev, kept_ino = st.st_ino, kept_timeout_ms = -1;
            }
            receive_timeout(kept_fd, timeout_ms, &kept_timeout_ms);
            how = exchange(kept_fd, request, buf, sizeof buf);
            if (how != EXCHANGED)
                forget_kept(1);
            if (how != NOT_SENT) /* a kept connection the manager had closed: once more on a new one */
                break;
        }
        __atomic_store_n(&kept_busy, 0, __ATOMIC_RELEASE);
    } else {
        int s = connect_manager();
        long current = -1;
        if (s >= 0) {
            receive_timeout(s, timeout_ms, &current);
            how = exchange(s, request, buf, sizeof buf);
            close(s);
        }
    }
    if (how == INTERRUPTED && timeout_ms == 0) {
        result = ANSWER_ERR;
        *err = EINTR;
    } else if (how == EXCHANGED && strncmp(buf, "ok", 2) == 0 && (buf[2] == '\0' || buf[2] == ' ')) {
        const char *values = buf[2] ? buf + 3 : "";
        if (strlen(values) < out_size) {
            memcpy(out, values, strlen(values) + 1);
            result = ANSWER_OK;
        }
    } else if (how == EXCHANGED && strncmp(buf, "err ", 4) == 0) {
        *err = atoi(buf + 4);
        result = *err > 0 ? ANSWER_ERR : ANSWER_NONE;
    }
    errno = saved;
    return result;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The manager's view of the port's termios (struct termios2); 0 on success. */
static int ask_termios(unsigned long long rdev, struct k_termios2 *t)
{
    char request[64], hex[128];
    int err;
    snprintf(request, sizeof request, "tcgets %llu", rdev);
    if (ask(request, 5000, hex, sizeof hex, &err) != ANSWER_OK || strlen(hex) != 2 * sizeof *t)
        return -1;
    unsigned char *bytes = (unsigned char *)t;
    for (size_t i = 0; i < sizeof *t; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        bytes[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* tcsets with the kernel struct (36 or 44 bytes); returns the ioctl's result, or -2 for "kernel's". */
static int set_termios(unsigned long long rdev, const char *mode, const void *raw, size_t size)
{
    static const char digits[] = "0123456789abcdef";
    char request[192], out[8];
    int len = snprintf(request, sizeof request, "tcsets %llu %s ", rdev, mode);
    const unsigned char *bytes = raw;
    for (size_t i = 0; i < size; i++) {
        request[len++] = digits[bytes[i] >> 4];
        request[len++] = digits[bytes[i] & 15];
    }
    request[len] = '\0';
    int err;
    switch (ask(request, 0, out, sizeof out, &err)) {
    case ANSWER_OK:
        return 0;
    case ANSWER_ERR:
        errno = err;
        return -1;
    default:
        return -2;
    }
}

/* A simple request; -2 when the kernel should have the call. */
static int simple(const char *request, long timeout_ms, char *out, size_t out_size)
{
    int err;
    switch (ask(request, timeout_ms, out, out_size, &err)) {
    case ANSWER_OK:
        return 0;
    case ANSWER_ERR:
        errno = err;
        return -1;
    default:
        return -2;
    }
}

static int send_break(unsigned long long rdev, long ms)
{
    char request[64], out[8];
    snprintf(request, sizeof request, "break %llu pulse %ld", rdev, ms);
    return simple(request, 0, out, sizeof out);
}

static int drain(unsigned long long rdev)
{
    char request[64], out[8];
    snprintf(request, sizeof request, "drain %llu", rdev);
    return simple(request, 0, out, sizeof out);
}

static int flush(unsigned long long rdev, long queue)
{
    static const char *const queues[] = {"in", "out", "both"}; /* TCIFLUSH, TCOFLUSH, TCIOFLUSH */
    char request[64], out[8];
    if (queue < 0 || queue > 2) {
        errno = EINVAL;
        return -1;
    }
    snprintf(request, sizeof request, "flush %llu %s", rdev, queues[queue]);
    return simple(request, 5000, out, sizeof out);
}

static const char *set_mode(unsigned long request)
{
    switch (request) {
    case TCSETS: case VC_TCSETS2: return "now";
    case TCSETSW: case VC_TCSETSW2: return "drain";
    case TCSETSF: case VC_TCSETSF2: return "flush";
    }
    return NULL;
}

/* The calls that take the port's device number: -2 when the kernel should have them. */
static int port_ioctl(int fd, unsigned long request, void *arg)
{
    unsigned long long rdev;
    const char *mode = set_mode(request);
    char line[96], out[160];
    if (!vcom_port(fd, &rdev))
        return -2;
    if (mode != NULL) {
        size_t size = (request == TCSETS || request == TCSETSW || request == TCSETSF) ? sizeof(struct k_termios)
                                                                                    : sizeof(struct k_termios2);
        if (arg == NULL) {
            errno = EFAULT;
            return -1;
        }
        return set_termios(rdev, mode, arg, size);
    }
    int r;
    switch (request) {
    case TIOCMGET: case TIOCMSET: case TIOCMBIS: case TIOCMBIC: {
        const char *op = request == TIOCMGET ? "get" : request == TIOCMSET ? "set" : request == TIOCMBIS ? "bis" : "bic";
        if (arg == NULL) {
            errno = EFAULT;
            return -1;
        }
        snprintf(line, sizeof line, "modem %llu %s %d", rdev, op, request == TIOCMGET ? 0 : *(int *)arg);
        r = simple(line, request == TIOCMGET ? 5000 : 0, out, sizeof out);
        if (r == 0 && request == TIOCMGET)
            *(int *)arg = atoi(out);
        return r;
    }
    case TIOCSBRK: case TIOCCBRK:
        snprintf(line, sizeof line, "break %llu %s", rdev, request == TIOCSBRK ? "on" : "off");
        return simple(line, 0, out, sizeof out);
    case TCSBRK:
        return (long)arg == 0 ? send_break(rdev, 250) : drain(rdev);
    case TCFLSH:
        return flush(rdev, (long)arg);
    case TIOCOUTQ:
        if (arg == NULL) {
            errno = EFAULT;
            return -1;
        }
        snprintf(line, sizeof line, "outq %llu", rdev);
        r = simple(line, 5000, out, sizeof out);
        if (r == 0)
            *(int *)arg = atoi(out);
        return r;
    case TCSBRKP:
        return send_break(rdev, (long)arg > 0 ? (long)arg * 100 : 250);
    case TIOCMIWAIT:
        snprintf(line, sizeof line, "miwait %llu %lu", rdev, (unsigned long)arg);
        return simple(line, 0, out, sizeof out);
    case TIOCGICOUNT: {
        struct k_icount *c = arg;
        if (c == NULL) {
            errno = EFAULT;
            return -1;
        }
        snprintf(line, sizeof line, "icount %llu", rdev);
        r = simple(line, 5000, out, sizeof out);
        if (r == 0) {
            memset(c, 0, sizeof *c);
            if (sscanf(out, "%d %d %d %d %d %d %d %d %d %d %d", &c->cts, &c->dsr, &c->rng, &c->dcd, &c->rx, &c->tx,
                       &c->frame, &c->overrun, &c->parity, &c->brk, &c->buf_overrun) != 11)
                return -2;
        }
        return r;
    }
    }
    return -2;
}

/* Copy the manager's view into what the program reads back, when fd is a vcom port. */
static void patch_view(int fd, uint32_t *flags, uint8_t *line, uint8_t *cc, uint32_t *speeds)
{
    int saved = errno;
    struct k_termios2 view;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && ask_termios((unsigned long long)st.st_rdev, &view) == 0) {
        flags[0] = view.c_iflag;
        flags[1] = view.c_oflag;
        flags[2] = view.c_cflag;
        flags[3] = view.c_lflag;
        *line = view.c_line;
        memcpy(cc, view.c_cc, K_NCCS);
        if (speeds != NULL) {
            speeds[0] = view.c_ispeed;
            speeds[1] = view.c_ospeed;
        }
    }
    errno = saved;
}

EXPORT int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    switch (request) {
    case TCGETS: case VC_TCGETS2: {
        int r = REAL(ioctl_fn, ioctl)(fd, request, arg);
        if (r == 0 && arg != NULL && tagged(((struct k_termios *)arg)->c_cc)) {
            struct k_termios2 *t = arg; /* struct termios is its prefix */
            patch_view(fd, &t->c_iflag, &t->c_line, t->c_cc, request == VC_TCGETS2 ? &t->c_ispeed : NULL);
        }
        return r;
    }
    case TIOCMGET: case TIOCMSET: case TIOCMBIS: case TIOCMBIC: {
        /* A real UART answers these itself, at no cost added; a pty (a vcom port among them) says ENOTTY. */
        int saved = errno;
        int r = REAL(ioctl_fn, ioctl)(fd, request, arg);
        if (r == 0 || errno != ENOTTY)
            return r;
        int failed = errno;
        errno = saved;
        r = port_ioctl(fd, request, arg);
        if (r == -2) {
            errno = failed;
            return -1;
        }
        return r;
    }
    case TCSETS: case TCSETSW: case TCSETSF: case VC_TCSETS2: case VC_TCSETSW2: case VC_TCSETSF2:
    case TIOCSBRK: case TIOCCBRK: case TCSBRK: case TCSBRKP: case TIOCMIWAIT: case TIOCGICOUNT: case TIOCOUTQ:
    case TCFLSH: {
        int r = port_ioctl(fd, request, arg);
        return r == -2 ? REAL(ioctl_fn, ioctl)(fd, request, arg) : r;
    }
    }
    return REAL(ioctl_fn, ioctl)(fd, request, arg);
}

/* glibc's termios functions use its internal ioctl, which preloading cannot reach: they are caught here. */

EXPORT int tcgetattr(int fd, struct termios *t)
{
    int r = REAL(tcgetattr_fn, tcgetattr)(fd, t);
    if (r == 0 && tagged(t->c_cc)) {
        uint32_t flags[4] = {t->c_iflag, t->c_oflag, t->c_cflag, t->c_lflag};
        uint8_t cc[K_NCCS];
        memcpy(cc, t->c_cc, K_NCCS);
        patch_view(fd, flags, &t->c_line, cc, NULL);
        t->c_iflag = flags[0];
        t->c_oflag = flags[1];
        t->c_cflag = flags[2];
        t->c_lflag = flags[3];
        memcpy(t->c_cc, cc, K_NCCS);
    }
    return r;
}

EXPORT int tcsetattr(int fd, int action, const struct termios *t)
{
    static const char *const modes[] = {"now", "drain", "flush"};
    unsigned long long rdev;
    if (t != NULL && action >= TCSANOW && action <= TCSAFLUSH && vcom_port(fd, &rdev)) {
        /* As glibc's own tcsetattr builds the kernel's struct (sysdeps/unix/sysv/linux/tcsetattr.c). */
        struct k_termios k;
        memset(&k, 0, sizeof k);
        k.c_iflag = t->c_iflag;
#ifdef IBAUD0
        k.c_iflag &= ~IBAUD0;
#endif
        k.c_oflag = t->c_oflag;
        k.c_cflag = t->c_cflag;
        k.c_lflag = t->c_lflag;
        k.c_line = t->c_line;
        memcpy(k.c_cc, t->c_cc, K_NCCS);
        int r = set_termios(rdev, modes[action], &k, sizeof k);
        if (r != -2)
            return r;
    }
    return REAL(tcsetattr_fn, tcsetattr)(fd, action, t);
}

EXPORT int tcsendbreak(int fd, int duration)
{
    unsigned long long rdev;
    if (vcom_port(fd, &rdev)) {
        /* glibc: TCSBRK (0.25 s) for duration <= 0, else TCSBRKP with (duration + 99) / 100 deciseconds. */
        long ms = duration <= 0 ? 250 : (long)((duration + 99) / 100) * 100;
        int r = send_break(rdev, ms);
        if (r != -2)
            return r;
    }
    return REAL(tcsendbreak_fn, tcsendbreak)(fd, duration);
}

EXPORT int tcdrain(int fd)
{
    unsigned long long rdev;
    if (vcom_port(fd, &rdev)) {
        int r = drain(rdev);
        if (r != -2)
            return r;
    }
    return REAL(tcdrain_fn, tcdrain)(fd);
}

EXPORT int tcflush(int fd, int queue)
{
    unsigned long long rdev;
    if (vcom_port(fd, &rdev)) {
        int r = flush(rdev, queue);
        if (r != -2)
            return r;
    }
    return REAL(tcflush_fn, tcflush)(fd, queue);
}
