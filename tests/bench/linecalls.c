/* A program that changes its serial line on command, for timing a call to its arrival at
 * the server when the program runs under `vcom wrap` (the bench cannot wrap itself).
 *
 *   linecalls TTY      opens TTY in raw mode, then reads commands from stdin, one per line:
 *     b RATE           tcsetattr() with the new speed
 *     d 0|1            ioctl(TIOCMBIC|TIOCMBIS, TIOCM_DTR)
 *     r 0|1            the same for RTS
 *   and answers each with "<CLOCK_MONOTONIC ns when the call began> <0 or errno>".
 *
 * A handshake per call rather than a timed series: the bench waits for the server to see
 * one change before it asks for the next, so no answer can be matched to the wrong call.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static speed_t speed_of(long rate)
{
    switch (rate) {
    case 1200: return B1200;
    case 2400: return B2400;
    case 4800: return B4800;
    case 9600: return B9600;
    case 19200: return B19200;
    case 38400: return B38400;
    case 57600: return B57600;
    case 115200: return B115200;
    default: return B0;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: linecalls TTY  (commands on stdin)\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR | O_NOCTTY);
    struct termios t;
    if (fd < 0 || tcgetattr(fd, &t) < 0) {
        perror(argv[1]);
        return 1;
    }
    cfmakeraw(&t);
    if (tcsetattr(fd, TCSANOW, &t) < 0) {
        perror("tcsetattr");
        return 1;
    }
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        char what;
        long value;
        if (sscanf(line, "%c %ld", &what, &value) != 2) {
            fprintf(stderr, "linecalls: bad command %s", line);
            return 2;
        }
        int rc = 0, bits = what == 'd' ? TIOCM_DTR : TIOCM_RTS;
        speed_t speed = speed_of(value);
        if (what == 'b' && speed == B0) {
            fprintf(stderr, "linecalls: unknown rate %ld\n", value);
            return 2;
        }
        long long started = now_ns();
        if (what == 'b') {
            cfsetispeed(&t, speed);
            cfsetospeed(&t, speed);
            rc = tcsetattr(fd, TCSANOW, &t);
        } else {
            rc = ioctl(fd, value ? TIOCMBIS : TIOCMBIC, &bits);
        }
        printf("%lld %d\n", started, rc < 0 ? errno : 0);
        fflush(stdout);
    }
    return 0;
}
