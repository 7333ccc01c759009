/*
 * A serial program as a statically linked binary makes its calls: glibc's
 * tcsetattr (TCSETS, then TCGETS to check it stuck), raw ioctls for the modem
 * lines, TIOCMIWAIT, TIOCGICOUNT and tcsendbreak.  Built with gcc -static by
 * the tests; prints one "key=value" line per step.
 *
 * usage: uart_static PORT
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/serial.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void result(const char *what, int r)
{
    printf("%s=%s\n", what, r == 0 ? "ok" : strerror(errno));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    int fd = open(argv[1], O_RDWR | O_NOCTTY);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    struct termios t;
    tcgetattr(fd, &t);
    cfmakeraw(&t);
    t.c_cflag &= ~(CSIZE | PARODD);
    t.c_cflag |= CS8 | PARENB | CSTOPB | CLOCAL | CREAD;
    cfsetspeed(&t, B38400);
    result("tcsetattr", tcsetattr(fd, TCSANOW, &t));
    struct termios back;
    tcgetattr(fd, &back);
    printf("readback=%s\n", (back.c_cflag & (CSIZE | PARENB | PARODD | CSTOPB)) == (CS8 | PARENB | CSTOPB) ? "8E2" : "other");
    int bits = TIOCM_DTR | TIOCM_RTS;
    result("tiocmbis", ioctl(fd, TIOCMBIS, &bits));
    /* The loop-back plug answers DTR with DSR and DCD, RTS with CTS, once the notification is back. */
    int lines = 0;
    for (int i = 0; i < 200; i++) {
        if (ioctl(fd, TIOCMGET, &lines) != 0 || (lines & (TIOCM_CTS | TIOCM_DSR | TIOCM_CD)) == (TIOCM_CTS | TIOCM_DSR | TIOCM_CD))
            break;
        usleep(25000);
    }
    printf("tiocmget=%s%s%s%s%s\n", lines & TIOCM_DTR ? "DTR " : "", lines & TIOCM_RTS ? "RTS " : "",
           lines & TIOCM_CTS ? "CTS " : "", lines & TIOCM_DSR ? "DSR " : "", lines & TIOCM_CD ? "CD" : "");
    struct serial_icounter_struct before, after;
    result("icount", ioctl(fd, TIOCGICOUNT, &before));
    pid_t child = fork();
    if (child == 0) { /* a process the program starts: lowers RTS while the parent waits for CTS */
        usleep(200000);
        int rts = TIOCM_RTS;
        _exit(ioctl(fd, TIOCMBIC, &rts) == 0 ? 0 : 1);
    }
    result("tiocmiwait", ioctl(fd, TIOCMIWAIT, TIOCM_CTS));
    int status = 0;
    waitpid(child, &status, 0);
    printf("child=%s\n", WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "ok" : "failed");
    ioctl(fd, TIOCGICOUNT, &after);
    printf("cts_changes=%d\n", after.cts - before.cts);
    result("tcsendbreak", tcsendbreak(fd, 0));
    struct serial_struct serial;
    printf("tiocgserial=%s\n", ioctl(fd, TIOCGSERIAL, &serial) == 0 ? "ok" : strerror(errno));
    close(fd);
    return 0;
}
