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
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_iac.h"

#define PTY_READ 4096        /* a pty master read returns at most this much: status byte + 4095 data */
#define NET_READ 65536

enum { WAKE = 0, IDLE = 1, STATUS = 2, COMMAND = 3, MASTER = 4, SOCKET = 5, FAILED = 6, BUSY = 7, HOT = 8 };

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
            if (m & POLLHUP) /* the slave closed by the time of this poll (which always reports it) */
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

/* ---- The shared relay: many steady ports moved in C from the event loop's own thread ----------------
 *
 * relay() above costs a thread per port and polls in a loop: right for a port that moves data all the
 * time, too much for a thousand ports that each move a few chunks a second.  A Mux holds any number of lent
 * ports in one epoll set that the event loop watches (its fileno); when it is readable the loop calls
 * run(), which moves every ready chunk in C (one pty read then one send, or one receive then one pty
 * write) and hands back, with the same outcome as relay(), each port that needs Python:
 *
 *   STATUS, COMMAND, MASTER, SOCKET  as relay() (a status byte, a telnet command, the slave's close, the
 *                                    socket's EOF or error);
 *   BUSY                             a send or a pty write took only part: what is left comes back as
 *                                    unsent or undelivered, and the loop queues it with its usual
 *                                    back-pressure (the Mux keeps no buffer per port, so two thousand lent
 *                                    ports cost a few dozen bytes each);
 *   HOT                              hot_events chunks within hot_window_ms: a port for a relay() thread;
 *   WAKE                             (remove()) the loop takes the port back before touching it.
 *
 * A quiet port stays lent: it costs nothing here, and its next chunk (a program that polls its device
 * every few seconds) moves in C at once instead of through the loop's Python.  sending() names the ports
 * that sent data since it was last called, so that their links watch for the server's acknowledgements
 * (the peer timeout), which sends made here do not arm.
 *
 * Every descriptor is non-blocking and nothing waits: run() returns as soon as the ready chunks have
 * moved.  The GIL stays held (the loop's thread has nothing else to do meanwhile). */

#define MUX_EVENTS 256

struct lent {
    int master, sock;        /* master < 0: a free slot; slots are indexed by the master's descriptor */
    unsigned char iac, carry;
    unsigned int hot_events, events; /* hot_events 0: never hands back for heat */
    int hot_window_ms;
    int64_t since_ms;
    uint64_t sent, received;
    uint64_t sent_seen; /* sent at the last sending() */
};

struct mux_buffers {
    unsigned char pty_buf[PTY_READ];
    unsigned char out[2 * PTY_READ];
    unsigned char net_buf[NET_READ + 1];
    struct epoll_event events[MUX_EVENTS];
};

typedef struct {
    PyObject_HEAD
    int epfd;
    struct lent *slots;
    size_t nslots;
    Py_ssize_t count;
    struct mux_buffers *buf;
} Mux;

/* What a port hands back: pointers into the Mux's buffers, copied into the outcome at once. */
struct back {
    int reason, err;
    const unsigned char *unsent, *undelivered, *extra;
    size_t unsent_len, undelivered_len, extra_len;
};

#define STAY (-1)

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static struct lent *lent_of(Mux *m, int master)
{
    if (master < 0 || (size_t)master >= m->nslots || m->slots[master].master != master)
        return NULL;
    return &m->slots[master];
}

/* A chunk moved: note it, and whether that makes the port hot. */
static int moved(struct lent *l, int64_t now)
{
    if (l->hot_events == 0)
        return STAY;
    if (now - l->since_ms > l->hot_window_ms) {
        l->since_ms = now;
        l->events = 0;
    }
    return ++l->events >= l->hot_events ? HOT : STAY;
}

/* A send or pty write of len bytes from base took `done` (negative: it would block): the port stays if it
 * took everything, else the rest is handed back (*rest, *rest_len) for the loop to queue. */
static int passed_on(struct lent *l, int64_t now, ssize_t done, const unsigned char *base, size_t len,
                     const unsigned char **rest, size_t *rest_len)
{
    size_t took = done > 0 ? (size_t)done : 0;
    *rest = base + took;
    *rest_len = len - took;
    return *rest_len ? BUSY : moved(l, now);
}

/* The program's side: one pty read, encoded, sent. */
static int from_program(Mux *m, struct lent *l, uint32_t ev, int64_t now, struct back *b)
{
    struct mux_buffers *buf = m->buf;
    if (ev & EPOLLERR || (ev & EPOLLHUP && !(ev & EPOLLIN)))
        return MASTER; /* the slave closed: the loop reads the EIO itself */
    ssize_t n = read(l->master, buf->pty_buf, PTY_READ);
    if (n == 0 || (n < 0 && !would_block()))
        return MASTER;
    if (n < 0)
        return STAY;
    if (buf->pty_buf[0] != 0) { /* a status byte: for Python, after the data sent before it */
        b->extra = buf->pty_buf;
        b->extra_len = (size_t)n;
        return STATUS;
    }
    size_t data = (size_t)n - 1, len = data;
    const unsigned char *base = buf->pty_buf + 1;
    if (l->iac && memchr(base, IAC, data) != NULL) {
        len = iac_double(base, data, buf->out);
        base = buf->out;
    }
    l->sent += data;
    ssize_t sent = send(l->sock, base, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0 && !would_block()) {
        b->err = errno;
        b->unsent = base;
        b->unsent_len = len;
        return SOCKET;
    }
    return passed_on(l, now, sent, base, len, &b->unsent, &b->unsent_len);
}

/* The network's side: one receive, decoded, written to the pty. */
static int from_network(Mux *m, struct lent *l, int64_t now, struct back *b)
{
    struct mux_buffers *buf = m->buf;
    ssize_t n = recv(l->sock, buf->net_buf + 1, NET_READ, MSG_DONTWAIT);
    if (n == 0)
        return SOCKET; /* EOF: asyncio reads it again and sees the connection go */
    if (n < 0) {
        if (would_block())
            return STAY;
        b->err = errno;
        return SOCKET;
    }
    unsigned char *start = buf->net_buf + 1;
    size_t len = (size_t)n, stop = len, data = len;
    if (l->carry) {
        buf->net_buf[0] = IAC;
        start = buf->net_buf;
        len += 1;
        l->carry = 0;
    }
    if (l->iac) {
        data = decode(start, len, &stop);
        if (stop == len - 1) { /* an IAC ends the receive: its pair or command comes with the next */
            l->carry = 1;
            stop = len;
        }
    } else {
        data = len;
        stop = len;
    }
    l->received += data;
    b->undelivered = start;
    b->undelivered_len = data;
    if (stop < len) { /* a telnet command: Python's session takes it from here */
        b->extra = start + stop;
        b->extra_len = len - stop;
        return COMMAND;
    }
    if (data == 0)
        return STAY;
    if (!slave_open(l->master))
        return MASTER; /* dropped by Python as arriving after the close */
    ssize_t put = write(l->master, start, data);
    if (put < 0 && !would_block())
        return MASTER;
    return passed_on(l, now, put, start, data, &b->undelivered, &b->undelivered_len);
}

/* Out of the epoll set, the slot freed, and the outcome as relay() gives it plus the bytes moved:
 * (reason, unsent, undelivered, extra, errno, carried, sent, received). */
static PyObject *hand_back(Mux *m, struct lent *l, const struct back *b)
{
    epoll_ctl(m->epfd, EPOLL_CTL_DEL, l->master, NULL);
    epoll_ctl(m->epfd, EPOLL_CTL_DEL, l->sock, NULL);
    PyObject *outcome = Py_BuildValue(
        "(iy#y#y#iy#KK)", b->reason, b->unsent ? (const char *)b->unsent : "", (Py_ssize_t)b->unsent_len,
        b->undelivered ? (const char *)b->undelivered : "", (Py_ssize_t)b->undelivered_len,
        b->extra ? (const char *)b->extra : "", (Py_ssize_t)b->extra_len, b->err, "\xff",
        (Py_ssize_t)(l->carry ? 1 : 0), (unsigned long long)l->sent, (unsigned long long)l->received);
    l->master = -1;
    m->count--;
    return outcome;
}

static int mux_grow(Mux *m, size_t need)
{
    if (need <= m->nslots)
        return 0;
    size_t size = m->nslots ? m->nslots : 64;
    while (size < need)
        size *= 2;
    struct lent *slots = PyMem_Realloc(m->slots, size * sizeof *slots);
    if (slots == NULL)
        return -1;
    for (size_t i = m->nslots; i < size; i++)
        slots[i].master = -1;
    m->slots = slots;
    m->nslots = size;
    return 0;
}

static PyObject *Mux_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ":Mux") || (kwds != NULL && PyDict_GET_SIZE(kwds) && !PyArg_ParseTupleAndKeywords(args, kwds, ":Mux", (char *[]){NULL})))
        return NULL;
    Mux *m = (Mux *)type->tp_alloc(type, 0);
    if (m == NULL)
        return NULL;
    m->epfd = -1;
    m->buf = PyMem_RawMalloc(sizeof *m->buf);
    if (m->buf == NULL) {
        Py_DECREF(m);
        return PyErr_NoMemory();
    }
    m->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (m->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

static void Mux_dealloc(Mux *m)
{
    if (m->epfd >= 0)
        close(m->epfd);
    PyMem_Free(m->slots);
    PyMem_RawFree(m->buf);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static int mux_check(Mux *m)
{
    if (m->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the Mux is closed");
        return -1;
    }
    return 0;
}

static PyObject *Mux_add(Mux *m, PyObject *args)
{
    int master, sock, iac, hot_events, hot_window_ms;
    if (!PyArg_ParseTuple(args, "iipii:add", &master, &sock, &iac, &hot_events, &hot_window_ms) || mux_check(m))
        return NULL;
    if (master < 0 || sock < 0 || hot_events < 0) {
        PyErr_SetString(PyExc_ValueError, "bad descriptor or count");
        return NULL;
    }
    if (lent_of(m, master) != NULL) {
        PyErr_SetString(PyExc_ValueError, "that pty is lent already");
        return NULL;
    }
    if (mux_grow(m, (size_t)master + 1) < 0)
        return PyErr_NoMemory();
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uint32_t)master};
    if (epoll_ctl(m->epfd, EPOLL_CTL_ADD, master, &ev) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    ev.data.u64 |= (uint64_t)1 << 32;
    if (epoll_ctl(m->epfd, EPOLL_CTL_ADD, sock, &ev) < 0) {
        int err = errno;
        epoll_ctl(m->epfd, EPOLL_CTL_DEL, master, NULL);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int64_t now = now_ms();
    m->slots[master] = (struct lent){.master = master, .sock = sock, .iac = (unsigned char)iac,
                                     .hot_events = (unsigned)hot_events, .hot_window_ms = hot_window_ms,
                                     .since_ms = now};
    m->count++;
    Py_RETURN_NONE;
}

static PyObject *Mux_remove(Mux *m, PyObject *args)
{
    int master;
    if (!PyArg_ParseTuple(args, "i:remove", &master))
        return NULL;
    struct lent *l = lent_of(m, master);
    if (l == NULL)
        Py_RETURN_NONE;
    struct back b = {.reason = WAKE};
    return hand_back(m, l, &b);
}

static PyObject *Mux_counts(Mux *m, PyObject *args)
{
    int master;
    if (!PyArg_ParseTuple(args, "i:counts", &master))
        return NULL;
    struct lent *l = lent_of(m, master);
    if (l == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(KK)", (unsigned long long)l->sent, (unsigned long long)l->received);
}

/* Appends (master, outcome) to the list; -1 on a Python error. */
static int append_back(PyObject *list, Mux *m, struct lent *l, const struct back *b)
{
    int master = l->master;
    PyObject *outcome = hand_back(m, l, b);
    if (outcome == NULL)
        return -1;
    PyObject *item = Py_BuildValue("(iN)", master, outcome);
    if (item == NULL)
        return -1;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r;
}

static PyObject *Mux_run(Mux *m, PyObject *Py_UNUSED(ignored))
{
    if (mux_check(m))
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    int n = epoll_wait(m->epfd, m->buf->events, MUX_EVENTS, 0);
    if (n < 0 && errno != EINTR) {
        Py_DECREF(list);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int64_t now = n > 0 ? now_ms() : 0;
    for (int i = 0; i < n; i++) {
        uint64_t data = m->buf->events[i].data.u64;
        struct lent *l = lent_of(m, (int)(uint32_t)data);
        if (l == NULL)
            continue; /* handed back earlier in this batch */
        struct back b = {0};
        b.reason = data >> 32 ? from_network(m, l, now, &b) : from_program(m, l, m->buf->events[i].events, now, &b);
        if (b.reason != STAY && append_back(list, m, l, &b) < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

static PyObject *Mux_sending(Mux *m, PyObject *Py_UNUSED(ignored))
{
    if (mux_check(m))
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < m->nslots; i++) {
        struct lent *l = &m->slots[i];
        if (l->master < 0 || l->sent == l->sent_seen)
            continue;
        l->sent_seen = l->sent;
        PyObject *master = PyLong_FromLong(l->master);
        if (master == NULL || PyList_Append(list, master) < 0) {
            Py_XDECREF(master);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(master);
    }
    return list;
}

static PyObject *Mux_fileno(Mux *m, PyObject *Py_UNUSED(ignored))
{
    if (mux_check(m))
        return NULL;
    return PyLong_FromLong(m->epfd);
}

static PyObject *Mux_close(Mux *m, PyObject *Py_UNUSED(ignored))
{
    if (m->count) {
        PyErr_SetString(PyExc_ValueError, "ports are still lent");
        return NULL;
    }
    if (m->epfd >= 0)
        close(m->epfd);
    m->epfd = -1;
    Py_RETURN_NONE;
}

static Py_ssize_t Mux_len(Mux *m)
{
    return m->count;
}

static PyMethodDef Mux_methods[] = {
    {"add", (PyCFunction)Mux_add, METH_VARARGS,
     "add(master, sock, iac, hot_events, hot_window_ms): lend a port's pty master and socket"},
    {"remove", (PyCFunction)Mux_remove, METH_VARARGS, "remove(master) -> outcome (WAKE), or None if not lent"},
    {"counts", (PyCFunction)Mux_counts, METH_VARARGS, "counts(master) -> (sent, received) so far, or None"},
    {"run", (PyCFunction)Mux_run, METH_NOARGS, "run() -> [(master, outcome)] for the ports handed back"},
    {"sending", (PyCFunction)Mux_sending, METH_NOARGS, "sending() -> [master] of the ports that sent since the last call"},
    {"fileno", (PyCFunction)Mux_fileno, METH_NOARGS, "the epoll descriptor the event loop watches"},
    {"close", (PyCFunction)Mux_close, METH_NOARGS, "close the epoll descriptor (no port may be lent)"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Mux_as_sequence = {.sq_length = (lenfunc)Mux_len};

static PyTypeObject MuxType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vcom._relay.Mux",
    .tp_basicsize = sizeof(Mux),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Mux(): many lent ports moved in C from the event loop's thread (see vcom.port.express)",
    .tp_new = Mux_new,
    .tp_dealloc = (destructor)Mux_dealloc,
    .tp_methods = Mux_methods,
    .tp_as_sequence = &Mux_as_sequence,
};

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
    if (PyType_Ready(&MuxType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&MuxType);
    if (PyModule_AddObject(m, "Mux", (PyObject *)&MuxType) < 0) {
        Py_DECREF(&MuxType);
        Py_DECREF(m);
        return NULL;
    }
    static const struct { const char *name; int value; } reasons[] = {
        {"WAKE", WAKE}, {"IDLE", IDLE}, {"STATUS", STATUS}, {"COMMAND", COMMAND},
        {"MASTER", MASTER}, {"SOCKET", SOCKET}, {"FAILED", FAILED}, {"BUSY", BUSY}, {"HOT", HOT},
    };
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
        if (PyModule_AddIntConstant(m, reasons[i].name, reasons[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
