/* IAC doubling (RFC 854: a data byte 255 goes on the wire as IAC IAC), shared by the C loops of
 * _speedups.c (the event loop's path) and _relay.c (express). */
#ifndef VCOM_IAC_H
#define VCOM_IAC_H

#include <stddef.h>
#include <string.h>

#define IAC 0xFF

/* src[0..n) into dst with every 0xFF doubled; dst has room for 2 * n.  Returns the bytes written. */
static size_t iac_double(const unsigned char *src, size_t n, unsigned char *dst)
{
    size_t j = 0;
    const unsigned char *from = src, *end = src + n, *p;
    while ((p = memchr(from, IAC, (size_t)(end - from))) != NULL) {
        memcpy(dst + j, from, (size_t)(p - from));
        j += (size_t)(p - from);
        const unsigned char *q = p; /* a run of 0xFF (a firmware image's padding) in one go */
        while (q < end && *q == IAC)
            q++;
        memset(dst + j, IAC, 2 * (size_t)(q - p));
        j += 2 * (size_t)(q - p);
        from = q;
    }
    memcpy(dst + j, from, (size_t)(end - from));
    return j + (size_t)(end - from);
}

#endif
