/* What an LD_PRELOAD library costs a program that is not using a vcom port: CALLS calls
 * alternating tcgetattr() and ioctl(TIOCMGET) on the tty named by argv[1], timed with
 * CLOCK_MONOTONIC.  Prints the nanoseconds per call.  TIOCMGET fails on a pty (ENOTTY);
 * the call is what is measured, not its answer.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: ttycalls TTY CALLS\n");
        return 2;
    }
    long calls = atol(argv[2]);
    int fd = open(argv[1], O_RDWR | O_NOCTTY);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    struct termios t;
    int bits;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < calls; i += 2) {
        tcgetattr(fd, &t);
        ioctl(fd, TIOCMGET, &bits);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.1f\n", ns / (double)calls);
    return 0;
}
