/* A busy port's bytes moved in C, both ways, without the event loop: vcom.port.express.
 *
 * relay(master, sock, wake, iac, idle_ms, counters) runs with the GIL released until something needs
 * Python, then returns (reason, out_pending, in_pending, extra, errno, carried):
 *
 *   out_pending  bytes read from the pty and already encoded (IAC doubled) that the socket has not taken
 *   in_pending   bytes from the network, already decoded, that the pty has not taken
 *   extra        a pty status byte (STATUS), or the received bytes from a telnet command on (COMMAND)
 *   carried      an IAC that ended the last receive, its pair (or command) still to come, for the session
 *
 * It is socat's loop: each direction has one pending buffer, a side is read only while what came from it
 * has been passed on, and every descriptor is non-blocking, so one poll() serves both directions and the
 * wake descriptor (an eventfd the loop writes to take the port back) ends it within microseconds.  What it
 * cannot do itself it leaves untouched in the kernel where it can (a closed slave's EIO, a socket's EOF or
 * error, which asyncio then sees for itself) or hands back in `extra` (a status byte, a telnet command).
 *
 * counters[0] and counters[1] (a bytearray of 16) count data bytes to and from the remote as they move, so
 * that status can show them while the relay runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_iac.h"

#define PTY_READ 4096        /* a pty master read returns at most this much: status byte + 4095 data */
#define NET_READ 65536

enum { WAKE = 0, IDLE = 1, STATUS = 2, COMMAND = 3, MASTER = 4, SOCKET = 5, FAILED = 6 };

struct relay {
    int master, sock, wake, iac, idle_ms;
    volatile uint64_t *counters;
    const unsigned char *out_base, *in_base; /* the pending bytes: out_base + out_off, in_base + in_off */
    size_t out_off, out_len, in_off, in_len;
    const unsigned char *extra;
    size_t extra_len;
    int err;
    int carry;                           /* the last receive ended in an IAC: half a pair, or a command's start */
    /* the buffers (not cleared at the start: only what the lengths above cover is ever read) */
    unsigned char pty_buf[PTY_READ];
    unsigned char out[2 * PTY_READ];     /* encoded, when the read had a 0xFF to double (else sent from pty_buf) */
    unsigned char net_buf[NET_READ + 1]; /* [0]: an IAC carried over from the last receive; decoded in place */
};

/* Decode buf in place (IAC IAC -> 0xFF); stops at an IAC that is not the first of a pair (a command, or
 * the data's end, where the pair may go on in the next receive): *stop is then its offset, else n.  What
 * follows the stop is left as it was. */
static size_t decode(unsigned char *buf, size_t n, size_t *stop)
{
    size_t j = 0;
    unsigned char *dst = buf;
    const unsigned char *src = buf, *from = buf, *end = buf + n, *p;
    while ((p = memchr(from, IAC, (size_t)(end - from))) != NULL) {
        if (dst + j != from)
            memmove(dst + j, from, (size_t)(p - from));
        j += (size_t)(p - from);
        const unsigned char *q = p;
        while (q < end && *q == IAC)
            q++;
        size_t pairs = (size_t)(q - p) / 2;
        memset(dst + j, IAC, pairs);
        j += pairs;
        if ((q - p) & 1) { /* the run's last IAC starts a command, or ends the data */
            *stop = (size_t)(q - 1 - src);
            return j;
        }
        from = q;
    }
    if (dst + j != from)
        memmove(dst + j, from, (size_t)(end - from));
    *stop = n;
    return j + (size_t)(end - from);
}

static int would_block(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

/* Whether a program still holds the slave: the same question Port.deliver asks before writing to it. */
static int slave_open(int master)
{
    struct pollfd p = {master, POLLIN, 0};
    return poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP);
}

static int run(struct relay *r)
{
    for (;;) {
        struct pollfd fds[3] = {
            {r->master, (short)((r->out_len == 0 ? POLLIN : 0) | (r->in_len ? POLLOUT : 0)), 0},
            {r->sock, (short)((r->in_len == 0 ? POLLIN : 0) | (r->out_len ? POLLOUT : 0)), 0},
            {r->wake, POLLIN, 0},
        };
        int ready = poll(fds, 3, r->idle_ms);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            r->err = errno;
            return FAILED;
        }
        if (ready == 0)
            return IDLE;
        if (fds[2].revents)
            return WAKE;
        short m = fds[0].revents, s = fds[1].revents;
        if (m & (POLLERR | POLLNVAL) || (m & POLLHUP && !(m & POLLIN)))
            return MASTER; /* the slave closed: the loop reads the EIO itself */
        if (s & POLLNVAL)
            return SOCKET;

        /* the program's side: one pty read, encoded, then as much as the socket takes */
        int fresh_out = 0;
        if (m & POLLIN && r->out_len == 0) {
            /* One read per send: a read right after a full one waits in the kernel for the line discipline
             * to be refilled (measured through one tcp:// port: 77 MB/s with two, 100 with one). */
            ssize_t n = read(r->master, r->pty_buf, PTY_READ);
            if (n == 0 || (n < 0 && !would_block()))
                return MASTER; /* EIO: the slave closed; the loop reads it itself */
            if (n > 0) {
                if (r->pty_buf[0] != 0) { /* a status byte: settings or a flush, for Python, in order */
                    r->extra = r->pty_buf;
                    r->extra_len = (size_t)n;
                    return STATUS;
                }
                size_t data = (size_t)n - 1;
                r->out_off = 0;
                if (r->iac && memchr(r->pty_buf + 1, IAC, data) != NULL) {
                    r->out_base = r->out;
                    r->out_len = iac_double(r->pty_buf + 1, data, r->out);
                } else { /* nothing to double: sent from where it was read */
                    r->out_base = r->pty_buf + 1;
                    r->out_len = data;
                }
                r->counters[0] += data;
                fresh_out = 1;
            }
        }
        if (r->out_len && (fresh_out || s & POLLOUT)) {
            ssize_t sent = send(r->sock, r->out_base + r->out_off, r->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (sent < 0 && !would_block()) {
                r->err = errno;
                return SOCKET;
            }
            if (sent > 0) {
                r->out_off += (size_t)sent;
                r->out_len -= (size_t)sent;
            }
        }

        /* the network's side: one receive, decoded, then as much as the pty takes */
        int fresh_in = 0;
        if (s & (POLLIN | POLLHUP | POLLERR) && r->in_len == 0) {
            ssize_t n = recv(r->sock, r->net_buf + 1, NET_READ, MSG_DONTWAIT);
            if (n == 0)
                return SOCKET; /* EOF: asyncio reads it again and sees the connection go */
            if (n < 0 && !would_block()) {
                r->err = errno;
                return SOCKET;
            }
            if (n > 0) {
                unsigned char *start = r->net_buf + 1;
                size_t len = (size_t)n, stop = len;
                if (r->carry) {
                    r->net_buf[0] = IAC;
                    start = r->net_buf;
                    len += 1;
                    r->carry = 0;
                }
                if (r->iac) {
                    r->in_len = decode(start, len, &stop);
                    if (stop == len - 1 && stop < len) { /* an IAC ends the receive: wait for the next */
                        r->carry = 1;
                        stop = len;
                    }
                } else {
                    r->in_len = len;
                }
                r->in_base = start;
                r->in_off = 0;
                r->counters[1] += r->in_len;
                if (stop < len) { /* a telnet command: Python's session takes it from here */
                    r->extra = start + stop;
                    r->extra_len = len - stop;
                    return COMMAND;
                }
                fresh_in = 1;
            }
        }
        if (r->in_len && (fresh_in || m & POLLOUT)) {
            if (!slave_open(r->master))
                return MASTER; /* dropped by Python as arriving after the close */
            ssize_t put = write(r->master, r->in_base + r->in_off, r->in_len);
            if (put < 0 && !would_block())
                return MASTER;
            if (put > 0) {
                r->in_off += (size_t)put;
                r->in_len -= (size_t)put;
            }
        }
    }
}

static PyObject *relay(PyObject *module, PyObject *args)
{
    int master, sock, wake, iac, idle_ms;
    Py_buffer counters;
    if (!PyArg_ParseTuple(args, "iiipiw*", &master, &sock, &wake, &iac, &idle_ms, &counters))
        return NULL;
    if (counters.len < 16) {
        PyBuffer_Release(&counters);
        PyErr_SetString(PyExc_ValueError, "counters must hold two 64-bit numbers");
        return NULL;
    }
    struct relay *r = PyMem_RawMalloc(sizeof *r);
    if (r == NULL) {
        PyBuffer_Release(&counters);
        return PyErr_NoMemory();
    }
    memset(r, 0, offsetof(struct relay, pty_buf));
    r->master = master;
    r->sock = sock;
    r->wake = wake;
    r->iac = iac;
    r->idle_ms = idle_ms;
    r->counters = (volatile uint64_t *)counters.buf;
    int reason;
    Py_BEGIN_ALLOW_THREADS
    reason = run(r);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&counters);
    /* A receive that ended in an IAC whose pair has not come: the session takes it on (carried). */
    PyObject *result = Py_BuildValue("(iy#y#y#iy#)", reason, r->out_len ? (const char *)r->out_base + r->out_off : "", (Py_ssize_t)r->out_len,
                                     r->in_len ? (const char *)r->in_base + r->in_off : "", (Py_ssize_t)r->in_len,
                                     r->extra ? (const char *)r->extra : "", (Py_ssize_t)(r->extra ? r->extra_len : 0), r->err,
                                     "\xff", (Py_ssize_t)(r->carry ? 1 : 0));
    PyMem_RawFree(r);
    return result;
}

static PyMethodDef methods[] = {
    {"relay", relay, METH_VARARGS,
     "relay(master, sock, wake, iac, idle_ms, counters) -> (reason, out_pending, in_pending, extra, errno, carried)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vcom._relay", "A busy port's two directions moved in C (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__relay(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    static const struct { const char *name; int value; } reasons[] = {
        {"WAKE", WAKE}, {"IDLE", IDLE}, {"STATUS", STATUS}, {"COMMAND", COMMAND},
        {"MASTER", MASTER}, {"SOCKET", SOCKET}, {"FAILED", FAILED},
    };
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
        if (PyModule_AddIntConstant(m, reasons[i].name, reasons[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
