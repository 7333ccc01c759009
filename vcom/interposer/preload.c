/*
 * vcom_lines: modem lines and break for programs on vcom ports.
 *
 * A pty has no modem lines: TIOCMGET/TIOCMSET/TIOCMBIS/TIOCMBIC fail with
 * ENOTTY and break requests do nothing, and nothing of them reaches the pty
 * master, so the manager cannot see them.  Preloaded into a program
 * (`vcom wrap PROGRAM`), this library catches those calls on pty slaves and
 * asks the manager over the Unix socket named by VCOM_LINES_SOCKET, which
 * turns them into RFC 2217 SET-CONTROL commands and answers with the lines in
 * force (DTR/RTS as driven, CTS/DSR/DCD/RI as the server last reported).
 *
 * On anything that is not a vcom port (another tty, a pty the manager does
 * not own, no manager) the call goes to the C library unchanged, so the
 * library is harmless in programs that open other devices too.
 *
 * The protocol is one line each way per call: "RDEV OP VALUE\n" answered by
 * "ok BITS\n" (BITS: TIOCM_* of the lines in force) or "no\n".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef int (*sendbreak_fn)(int, int);

/* Unix98 pty slaves: majors 136-143 (Documentation/admin-guide/devices.txt). */
static int pty_slave(int fd, unsigned long long *rdev)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode))
        return 0;
    unsigned int maj = major(st.st_rdev);
    if (maj < 136 || maj > 143)
        return 0;
    *rdev = (unsigned long long)st.st_rdev;
    return 1;
}

/* One request to the manager; 0 and *bits on success, -1 when this is not a vcom port. */
static int ask(unsigned long long rdev, const char *op, long value, int *bits)
{
    const char *path = getenv("VCOM_LINES_SOCKET");
    if (path == NULL || *path == '\0' || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return -1;
    int saved = errno;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        errno = saved;
        return -1;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    struct timeval tv = {2, 0}; /* a stuck manager must not hang the program for ever */
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char buf[128];
    int n = -1;
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) == 0) {
        int len = snprintf(buf, sizeof buf, "%llu %s %ld\n", rdev, op, value);
        if (write(s, buf, len) == len) {
            n = 0;
            ssize_t r;
            while (n < (int)sizeof buf - 1 && (r = read(s, buf + n, sizeof buf - 1 - n)) > 0) {
                n += r;
                if (memchr(buf, '\n', n))
                    break;
            }
        }
    }
    close(s);
    errno = saved;
    if (n < 3)
        return -1;
    buf[n] = '\0';
    if (strncmp(buf, "ok ", 3) != 0)
        return -1;
    *bits = atoi(buf + 3);
    return 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int ioctl(int fd, unsigned long request, ...)
{
    static ioctl_fn real_ioctl;
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (real_ioctl == NULL)
        real_ioctl = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");

    const char *op = NULL;
    long value = 0;
    switch (request) {
    case TIOCMGET: op = "get"; break;
    case TIOCMSET: op = "set"; value = arg ? *(int *)arg : 0; break;
    case TIOCMBIS: op = "bis"; value = arg ? *(int *)arg : 0; break;
    case TIOCMBIC: op = "bic"; value = arg ? *(int *)arg : 0; break;
    case TIOCSBRK: op = "break_on"; break;
    case TIOCCBRK: op = "break_off"; break;
    case TCSBRK:
        if ((long)arg != 0) /* tcdrain(): not a break */
            return real_ioctl(fd, request, arg);
        op = "break"; value = 250; break;
    case TCSBRKP: op = "break"; value = (long)arg > 0 ? (long)arg * 100 : 250; break;
    default:
        return real_ioctl(fd, request, arg);
    }
    unsigned long long rdev;
    int bits;
    if (!pty_slave(fd, &rdev) || ask(rdev, op, value, &bits) != 0)
        return real_ioctl(fd, request, arg);
    if (request == TIOCMGET && arg != NULL)
        *(int *)arg = bits;
    if (strcmp(op, "break") == 0)
        sleep_ms(value); /* a break takes its time, as tcsendbreak() does on a UART */
    return 0;
}

/* glibc's tcsendbreak() calls its internal ioctl, which preloading cannot catch. */
int tcsendbreak(int fd, int duration)
{
    static sendbreak_fn real_sendbreak;
    if (real_sendbreak == NULL)
        real_sendbreak = (sendbreak_fn)dlsym(RTLD_NEXT, "tcsendbreak");
    unsigned long long rdev;
    int bits;
    long ms = duration > 0 ? duration * 100L : 250;
    if (!pty_slave(fd, &rdev) || ask(rdev, "break", ms, &bits) != 0)
        return real_sendbreak(fd, duration);
    sleep_ms(ms);
    return 0;
}
