"""A program that dials a Hayes modem on a serial port and reports how the call ended.

It behaves like ``pppd`` or a dial-out script on a real modem line: it opens
the port *without* O_NOCTTY from a session of its own, so the port becomes its
controlling tty; it puts the line in raw mode and, unless ``--clocal``, clears
CLOCAL so that carrier loss hangs it up.  It then dials (``ATD123``), waits for
CONNECT, escapes to command mode with ``+++`` between two guard times of
silence, and hangs up the modem with ``ATH``.

After ``ATH`` it waits, bounded, for one of:

- end of file or EIO on the port: the call was hung up under it (it then
  waits, bounded, for the SIGHUP that goes with it);
- a line ``probe`` on stdin: it sends ``AT`` and waits for ``OK``, proving
  the port still works.

It prints one JSON line: whether the port was its controlling tty, whether it
connected, whether SIGHUP arrived, and how the wait ended.  Exit status 0
means the report is complete; the caller judges it.

Usage: ``python uart_dialer.py PORT [--clocal] [--guard SECONDS]``
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import sys
import termios
import time
import tty

_sighup = False


def _on_sighup(signum: int, frame: object) -> None:
    global _sighup
    _sighup = True


class Hangup(Exception):
    """The port gave end of file or EIO."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


def read_some(fd: int) -> bytes:
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return b""
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise Hangup("eio") from None
        raise
    if not data:
        raise Hangup("eof")
    return data


def expect(fd: int, marker: bytes, timeout: float, seen: bytearray) -> None:
    """Read until ``marker`` appears in what is read from now on; Hangup or TimeoutError otherwise."""
    start = len(seen)
    deadline = time.monotonic() + timeout
    while marker not in seen[start:]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{marker!r} not seen; got {bytes(seen[start:])!r}")
        readable, _, _ = select.select([fd], [], [], min(remaining, 0.2))
        if readable:
            seen += read_some(fd)


def send(fd: int, data: bytes) -> None:
    try:
        written = os.write(fd, data)
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise Hangup("eio") from None
        raise
    if written != len(data):
        raise RuntimeError(f"short write of {data!r}")


def configure(fd: int, clocal: bool) -> None:
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.IXON | termios.IXOFF)
    if clocal:
        attrs[2] |= termios.CLOCAL
    else:
        attrs[2] &= ~termios.CLOCAL
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def wait_for_end(fd: int, seen: bytearray, timeout: float) -> tuple[str, bool]:
    """After ATH: ("eof"|"eio", False) if hung up, ("alive", True) after a good probe, ("timeout", False)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout", False
        readable, _, _ = select.select([fd, sys.stdin], [], [], min(remaining, 0.2))
        if fd in readable:
            seen += read_some(fd)
        if sys.stdin in readable and sys.stdin.readline().strip() == "probe":
            send(fd, b"AT\r")
            expect(fd, b"OK", 10, seen)
            return "alive", True


def await_sighup(timeout: float) -> None:
    """Give a pending SIGHUP time to arrive: the kernel wakes readers of a hung-up tty with EOF or
    EIO before it signals the session, and Python runs the handler only between bytecodes."""
    deadline = time.monotonic() + timeout
    while not _sighup and time.monotonic() < deadline:
        time.sleep(0.02)


def dial(port: str, clocal: bool, guard: float) -> dict[str, object]:
    report: dict[str, object] = {"ctty": False, "connected": False, "escaped": False, "sighup": False,
                                 "end": None, "probe_ok": False}
    fd = os.open(port, os.O_RDWR | os.O_NONBLOCK)  # no O_NOCTTY: the port becomes our controlling tty
    seen = bytearray()
    try:
        report["ctty"] = os.tcgetpgrp(fd) == os.getpgrp()
        configure(fd, clocal)
        send(fd, b"ATD123\r")
        expect(fd, b"CONNECT", 10, seen)
        report["connected"] = True
        # Hayes escape: silence for the guard time, "+++", silence again; the modem then answers OK.
        time.sleep(guard * 1.25)
        send(fd, b"+++")
        expect(fd, b"OK", guard + 10, seen)
        report["escaped"] = True
        send(fd, b"ATH\r")
        report["end"], report["probe_ok"] = wait_for_end(fd, seen, 15)
    except Hangup as hangup:
        report["end"] = hangup.how
        await_sighup(5)
    except TimeoutError as exc:
        report["end"] = f"timeout: {exc}"
    finally:
        report["sighup"] = _sighup
        report["received"] = bytes(seen).decode("latin-1")
        os.close(fd)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port")
    parser.add_argument("--clocal", action="store_true", help="keep CLOCAL set: ignore the carrier")
    parser.add_argument("--guard", type=float, default=1.0, help="the modem's escape guard time, seconds")
    args = parser.parse_args()
    # Count SIGHUP instead of dying of it: the report must say what happened.
    signal.signal(signal.SIGHUP, _on_sighup)
    print(json.dumps(dial(args.port, args.clocal, args.guard)), flush=True)


if __name__ == "__main__":
    main()
