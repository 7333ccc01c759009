"""A trapped terminal ioctl answered: what ``vcom wrap``'s seccomp listener gets, in whichever process
holds it.

The supervisor of ``vcom wrap`` (:mod:`.supervisor`) answers its program's calls by asking the manager
over the interposer socket.  When the manager may reach into the program (root, or the same user with
no ptrace restriction), the supervisor hands the listener to it (:mod:`.handoff`), and the manager
answers the same calls in its own loop, one process wake-up fewer per call.  Both do it here: each
ioctl becomes the protocol's requests (:mod:`.protocol`), so the mapping from a call to what the port
does exists once; only how a request is asked, how the port of a descriptor is found, and what is kept
between calls differ (the subclasses).

For every notification exactly one answer goes back: a value (and what the call returns written into
the program's memory), an errno, or "continue" (the kernel runs the call as made: a tty that is not a
vcom port, a manager that does not answer).  A program must never wait for an answer that no one
will give.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
import termios
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..ratelog import RateLog
from ..termio import TCGETS2, TCSETS2, TCSETSF2, TERMIOS2_SIZE, TERMIOS_SIZE
from . import protocol, seccomp
from .seccomp import TCSETSW2, TIOCCBRK, TIOCGICOUNT, TIOCMIWAIT, TIOCSBRK, Notification

_SET_MODES = {termios.TCSETS: "now", termios.TCSETSW: "drain", termios.TCSETSF: "flush",
              TCSETS2: "now", TCSETSW2: "drain", TCSETSF2: "flush"}
_OLD_STRUCT = (termios.TCGETS, termios.TCSETS, termios.TCSETSW, termios.TCSETSF)
_TCGETS = (termios.TCGETS, TCGETS2)
_MODEM_OPS = {termios.TIOCMGET: "get", termios.TIOCMSET: "set", termios.TIOCMBIS: "bis", termios.TIOCMBIC: "bic"}
log = logging.getLogger(__name__)
_faults = RateLog(log)
_INT = struct.Struct("=i")
_ICOUNT = struct.Struct("=20i")  # struct serial_icounter_struct: 11 counters and 9 reserved
ANSWER_TIMEOUT = 5.0


class Continue(Exception):
    """Let the kernel run the call as the program made it."""


@dataclass(slots=True)
class Asking:
    """The request about the port that answers a trapped call, and what is done with its answer."""

    verb: str
    args: tuple[object, ...] = ()
    # Reads of state are bounded (a stuck manager cannot hang a program); a change waits as long as the
    # manager takes (it answers once the bytes written before it have left).
    timeout: float | None = ANSWER_TIMEOUT
    then: Callable[[tuple[str, ...]], None] | None = None  # the answer's values into the program


class CallAnswerer:
    """Answers the notifications of one seccomp listener.  A call that needs no waiting is answered in the
    listener's callback; one that must wait becomes a task of its own (a TIOCMIWAIT that waits for a
    modem line must not hold up the program's other threads)."""

    def __init__(self, listener: int) -> None:
        self.listener = listener
        self.tasks: set[asyncio.Task[None]] = set()

    # -- what the subclasses decide ---------------------------------------------------------------------

    def locate(self, n: Notification) -> tuple[int, Any, int] | None:
        """The port of the call's descriptor: (its device number, what answer_kept_tcgets() needs, a
        descriptor to close once answered or -1); None: not a vcom port.  Continue: the kernel's."""
        raise NotImplementedError

    def answer_kept_tcgets(self, n: Notification, rdev: int, found: Any) -> bool:
        """Answer a TCGETS without asking, when possible (True)."""
        raise NotImplementedError

    def tcgets_asking(self, n: Notification, rdev: int) -> Asking:
        """The request for a TCGETS that answer_kept_tcgets() did not answer."""
        raise NotImplementedError

    def tcsets_asking(self, n: Notification, rdev: int, mode: str, raw: bytes) -> Asking:
        raise NotImplementedError

    def settle(self, n: Notification, rdev: int, asking: Asking) -> Coroutine[Any, Any, None] | None:
        """Ask, and take the answer (``asking.then``): here and now (None), or in the coroutine returned.
        Continue or OSError (raised, or from the coroutine): the call's answer instead."""
        raise NotImplementedError

    # -- the calls ----------------------------------------------------------------------------------------

    def on_notification(self, n: Notification) -> None:
        later = self._start(n)
        if later is not None:
            task = asyncio.get_running_loop().create_task(later)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def respond(self, n: Notification, *, value: int = 0, error: int = 0, cont: bool = False) -> None:
        seccomp.respond(self.listener, n.id, value=value, error=error, cont=cont)

    def _start(self, n: Notification) -> Coroutine[Any, Any, None] | None:
        """Answer ``n`` if that needs no waiting; else the coroutine that waits and answers."""
        held = -1
        try:
            if not seccomp.is_ioctl(n):
                raise Continue
            found = self.locate(n)
            if found is None:
                self.respond(n, cont=True)
                return None
            rdev, kept, held = found
            if n.request in _TCGETS and self.answer_kept_tcgets(n, rdev, kept):
                self.respond(n, value=0)
                return None
            later = self.settle(n, rdev, self._asking(n, rdev))
            if later is None:
                self.respond(n, value=0)
                return None
            finishing, held = self._finish(n, later, held), -1  # the coroutine closes it
            return finishing
        except Exception as exc:  # noqa: BLE001 - every failure is an answer: never leave the program waiting
            self._answer_failure(n, exc)
        finally:
            if held >= 0:
                os.close(held)
        return None

    async def _finish(self, n: Notification, later: Coroutine[Any, Any, None], held: int) -> None:
        try:
            await later
        except Exception as exc:  # noqa: BLE001 - as in _start
            self._answer_failure(n, exc)
        else:
            self.respond(n, value=0)
        finally:
            if held >= 0:
                os.close(held)  # held until the answer: the manager checks that the asker has the port open

    def _answer_failure(self, n: Notification, exc: Exception) -> None:
        """Continue: the kernel runs the call; OSError: the call fails with its errno; anything else is a
        fault of ours, logged, and the kernel runs the call."""
        if isinstance(exc, OSError):
            self.respond(n, error=exc.errno or errno.EIO)
            return
        if not isinstance(exc, Continue):
            # With its traceback, but once a minute per request and kind: a fault that every call meets
            # (a program calling in a loop) must not bury the log.
            _faults.log(logging.ERROR, (n.request, type(exc)), "answering a trapped ioctl %#x failed; the "
                        "kernel runs it as the program made it", n.request, exc_info=exc)
        self.respond(n, cont=True)

    def _asking(self, n: Notification, rdev: int) -> Asking:
        """The request that answers the call (what the program passed is read here)."""
        request, arg = n.request, n.arg
        if request in _TCGETS:
            return self.tcgets_asking(n, rdev)
        if request in _SET_MODES:
            size = TERMIOS_SIZE if request in _OLD_STRUCT else TERMIOS2_SIZE
            raw = seccomp.read_memory(n.pid, arg, size)
            if not seccomp.still_waiting(self.listener, n.id):
                raise Continue  # what was read may belong to another process by now
            return self.tcsets_asking(n, rdev, _SET_MODES[request], raw)
        if request in _MODEM_OPS:
            op = _MODEM_OPS[request]
            if op == "get":
                return Asking("modem", (op, 0), then=lambda values: self.write(n, arg, _INT.pack(int(values[0]))))
            bits = _INT.unpack(seccomp.read_memory(n.pid, arg, 4))[0]
            return Asking("modem", (op, bits), timeout=None)
        if request in (TIOCSBRK, TIOCCBRK):
            return Asking("break", ("on" if request == TIOCSBRK else "off",), timeout=None)
        if request == termios.TCSBRK:
            if arg != 0:  # tcdrain()
                return Asking("drain", timeout=None)
            return Asking("break", ("pulse", 250), timeout=None)
        if request == termios.TCFLSH:
            if arg not in (termios.TCIFLUSH, termios.TCOFLUSH, termios.TCIOFLUSH):
                raise OSError(errno.EINVAL, "bad queue")
            return Asking("flush", (("in", "out", "both")[arg],))
        if request == termios.TIOCOUTQ:
            return Asking("outq", then=lambda values: self.write(n, arg, _INT.pack(int(values[0]))))
        if request == termios.TCSBRKP:
            ms = min(arg * 100, protocol.MAX_BREAK_MS) if arg > 0 else 250
            return Asking("break", ("pulse", ms), timeout=None)
        if request == TIOCMIWAIT:
            return Asking("miwait", (arg & 0xFFFFFFFF,), timeout=None)
        if request == TIOCGICOUNT:
            def counts(values: tuple[str, ...]) -> None:
                self.write(n, arg, _ICOUNT.pack(*(int(v) for v in values[:11]), *([0] * 9)))
            return Asking("icount", then=counts)
        raise Continue

    def write_view(self, n: Notification, view: bytes) -> None:
        """A TCGETS or TCGETS2 answer (``view``: a termios2 struct) into the program's memory."""
        self.write(n, n.arg, view[:TERMIOS_SIZE] if n.request == termios.TCGETS else view)

    def write(self, n: Notification, address: int, data: bytes) -> None:
        if not seccomp.still_waiting(self.listener, n.id):
            raise Continue  # the pid is no longer that program: never write into another process
        seccomp.write_memory(n.pid, address, data)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
