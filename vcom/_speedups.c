/* The two loops of the RFC 2217 data path that Python does a slice at a time: doubling every 0xFF
 * that goes out (RFC 854: a data byte 255 is sent as IAC IAC) and undoing it on what comes in.
 *
 * Optional: setuptools builds it at install time when a C compiler and Python's headers are there;
 * vcom.rfc2217 falls back to its own Python otherwise, with the same results (tests/test_rfc2217.py
 * runs both).  No state, no I/O, no GIL released: each call is one pass over one buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_iac.h"

/* escape(data) -> bytes: data with every 0xFF doubled; data itself (a bytes object) when it has none. */
static PyObject *escape(PyObject *module, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *src = in.buf;
    Py_ssize_t n = in.len, count = 0;
    for (Py_ssize_t i = 0; i < n; i++) /* a loop the compiler vectorises */
        count += src[i] == IAC;
    PyObject *out;
    if (count == 0 && PyBytes_CheckExact(arg)) {
        Py_INCREF(arg);
        out = arg;
    } else if ((out = PyBytes_FromStringAndSize(NULL, n + count)) != NULL) {
        iac_double(src, (size_t)n, (unsigned char *)PyBytes_AS_STRING(out));
    }
    PyBuffer_Release(&in);
    return out;
}

/* undouble(data) -> bytes | None: data with every IAC IAC pair made one 0xFF, when every IAC in it
 * is the first half of such a pair (pairs taken from the left, as a parser in the data state takes
 * them); None when an IAC starts a command or ends the data, which is for the full parser. */
static PyObject *undouble(PyObject *module, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *src = in.buf, *end = src + in.len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, in.len);
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    unsigned char *start = (unsigned char *)PyBytes_AS_STRING(out), *dst = start;
    const unsigned char *from = src, *p;
    while ((p = memchr(from, IAC, (size_t)(end - from))) != NULL) {
        memcpy(dst, from, (size_t)(p - from));
        dst += p - from;
        const unsigned char *q = p;
        while (q < end && *q == IAC)
            q++;
        if ((q - p) & 1) { /* the last IAC of the run starts a command, or ends the data */
            Py_DECREF(out);
            PyBuffer_Release(&in);
            Py_RETURN_NONE;
        }
        memset(dst, IAC, (size_t)((q - p) / 2));
        dst += (q - p) / 2;
        from = q;
    }
    memcpy(dst, from, (size_t)(end - from));
    dst += end - from;
    PyBuffer_Release(&in);
    if (dst - start != PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, dst - start) < 0)
        return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"escape", escape, METH_O, "Every 0xFF doubled (IAC IAC)."},
    {"undouble", undouble, METH_O, "Every IAC IAC made one 0xFF; None if an IAC starts a command or ends the data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vcom._speedups", "C loops of the RFC 2217 data path (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
