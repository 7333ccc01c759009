"""What a program on a vcom port sees beyond the pty: the manager's emulated
state of one port, kept per port and the same for every interposer.

* :class:`ProgramView`: the termios the program set.  The pty keeps most of
  it but forces CS8, no parity and CREAD; the program asked for more, reads
  back exactly what it set, and the remote gets it (``for_wire``).
* :class:`ModemCounter`: what TIOCGICOUNT counts and TIOCMIWAIT waits for,
  from the modem-state notifications of the remote port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import termios
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..settings import Signals
from ..termio import EXTPROC, TAG_SLOTS, Termios2

log = logging.getLogger(__name__)

# A view's generations come from one counter for the whole manager, so that on a device number they only grow,
# also when a port is removed and a new one gets its pty: a supervisor may take the highest it was told of
# as the newest (vcom.interposer.viewcache).
_generations = itertools.count(1)

# The bits of c_cflag that the pty does not keep (pty_set_termios forces CS8|CREAD and clears PARENB).
FORCED_CFLAG = termios.CSIZE | termios.PARENB | termios.CREAD


@dataclass(slots=True)
class ProgramView:
    """The termios an interposed program set, valid while the pty still holds what was applied for it.

    A program that is not interposed (no ``vcom wrap``, a static binary under
    ``wrap-all``) can set termios too; the kernel reports it like any other
    change, and from then on the pty's own view (8 bits, no parity) is the
    truth until an interposed program sets termios again.  A change is
    noticed by comparing what the pty holds with what was applied.
    """

    port: str = ""  # the port's name, for the log
    requested: Termios2 | None = None
    applied: Termios2 | None = None
    interposed: dict[int, str] = field(default_factory=dict)  # pid -> kind, of programs that asked
    # Counts the changes of what for_program answers; told of each (False), and of the port's removal
    # (True): the seccomp supervisors that keep views are sent a notice (vcom.interposer.viewcache).  The
    # second argument is the pid of the supervisor that asked for the change, if one did: it learns the
    # new view from its answer, so it is sent no notice (one send fewer on the way to the wire).
    generation: int = field(default_factory=lambda: next(_generations))
    on_change: Callable[[bool, int | None], None] | None = None
    # The last for_program answer and what it was made from (compared by identity: Termios2.unpack gives
    # one instance per value, so an unchanged pty termios is the same object).
    _shown: tuple[Termios2, Termios2 | None, Termios2 | None, Termios2] | None = field(
        default=None, repr=False, compare=False)

    def record(self, requested: Termios2, applied: Termios2) -> None:
        """A program set termios through an interposer; the caller tells the watchers (``changed``) before
        the pty takes it and again before the program's call is answered."""
        self.requested, self.applied = requested, applied

    def changed(self, maker: int | None = None) -> None:
        """The view changed; ``maker``: the supervisor that asked for it (not told)."""
        self.generation = next(_generations)
        if self.on_change is not None:
            self.on_change(False, maker)

    def valid(self, current: Termios2) -> bool:
        if self.requested is None:
            return False
        if current is not self.applied and current != self.applied:
            # What differs is said: it tells a program's stty from anything else that touched the pty.
            log.info("%s: the termios a program set through the interposer was changed by one that is not "
                     "interposed (%s): data bits and parity are now as the pty keeps them", self.port,
                     _differences(self.applied, current))
            self.requested = self.applied = None  # a program that is not interposed changed it since
            self.changed()
            return False
        return True

    def forget(self) -> None:
        """The port is removed."""
        self.requested = self.applied = None
        if self.on_change is not None:
            self.on_change(True, None)
            self.on_change = None

    def for_wire(self, current: Termios2) -> Termios2:
        """``current`` with the data bits and parity the program asked for, when it asked through us."""
        if not self.valid(current):
            return current
        assert self.requested is not None
        return replace(current, cflag=(current.cflag & ~FORCED_CFLAG) | (self.requested.cflag & FORCED_CFLAG))

    def for_program(self, current: Termios2) -> Termios2:
        """What ``tcgetattr`` returns to an interposed program: exactly what it set (the pty's termios
        with the forced bits, EXTPROC and the tag slots as the program gave them)."""
        shown = self._shown
        if shown is not None and shown[0] is current and shown[1] is self.requested and shown[2] is self.applied:
            return shown[3]  # every trapped TCGETS asks; building the answer took most of its time
        answer = self._for_program(current)
        self._shown = (current, self.requested, self.applied, answer)
        return answer

    def _for_program(self, current: Termios2) -> Termios2:
        if self.valid(current):
            assert self.requested is not None
            asked = self.requested
            cc = bytearray(current.cc)
            for slot in TAG_SLOTS:
                cc[slot] = asked.cc[slot]
            return replace(current, cflag=(current.cflag & ~FORCED_CFLAG) | (asked.cflag & FORCED_CFLAG),
                           lflag=(current.lflag & ~EXTPROC) | (asked.lflag & EXTPROC), cc=bytes(cc))
        # Not set through us yet: the pty's view, without what vcom itself keeps there.
        return replace(current, lflag=current.lflag & ~EXTPROC).with_tag(b"\0\0")


def _differences(before: Termios2 | None, after: Termios2) -> str:
    """The termios fields that differ, with their values (flags in octal, as termios.h writes them)."""
    if before is None:
        return "nothing was applied"
    said = []
    for name in ("iflag", "oflag", "cflag", "lflag", "line", "cc", "ispeed", "ospeed"):
        old, new = getattr(before, name), getattr(after, name)
        if old == new:
            continue
        if name == "cc":
            said.append(f"cc {old.hex()} -> {new.hex()}")
        elif name.endswith("flag"):
            said.append(f"{name} {old:#o} -> {new:#o}")
        else:
            said.append(f"{name} {old} -> {new}")
    return ", ".join(said)


# TIOCM_* bit of each input line, and its place in struct serial_icounter_struct.
_LINES = (("cts", termios.TIOCM_CTS), ("dsr", termios.TIOCM_DSR), ("ri", termios.TIOCM_RNG),
          ("dcd", termios.TIOCM_CAR))
# NOTIFY-MODEMSTATE delta bits (RFC 2217): the line changed since the last report.
_DELTAS = {"cts": 0x01, "dsr": 0x02, "ri": 0x04, "dcd": 0x08}


@dataclass(slots=True)
class _Waiter:
    mask: int
    snapshot: tuple[int, ...]
    done: asyncio.Future[None]


class ModemCounter:
    """Transitions of CTS, DSR, RI and DCD as a serial driver counts them (``uart_icount``).

    A change of level counts once; a delta bit with an unchanged level means the
    line went and came back between two reports, which counts twice.  RI counts
    its trailing edge only, as the kernel does.
    """

    def __init__(self) -> None:
        self.counts = dict.fromkeys(("cts", "dsr", "ri", "dcd"), 0)
        self._waiters: list[_Waiter] = []

    def update(self, old: Signals, new: Signals, state: int | None = None) -> None:
        for name, _ in _LINES:
            before, after = getattr(old, name), getattr(new, name)
            delta = state is not None and bool(state & _DELTAS[name])
            if name == "ri":
                if (before and after is False) or delta:  # trailing edge (the RFC's TERI bit)
                    self.counts[name] += 1
                continue
            if before is not None and after is not None and before != after:
                self.counts[name] += 1
            elif delta:
                self.counts[name] += 2
        self._wake()

    def snapshot(self, mask: int) -> tuple[int, ...]:
        return tuple(self.counts[name] for name, bit in _LINES if mask & bit)

    async def wait(self, mask: int) -> None:
        """TIOCMIWAIT: until a line in ``mask`` (TIOCM_CTS|DSR|RNG|CAR) has changed."""
        waiter = _Waiter(mask, self.snapshot(mask), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.done
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def cancel_all(self, exc: BaseException) -> None:
        """The port went away (removed, hung up): every waiter fails with ``exc``."""
        for waiter in self._waiters:
            if not waiter.done.done():
                waiter.done.set_exception(exc)
        self._waiters.clear()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            if not waiter.done.done() and self.snapshot(waiter.mask) != waiter.snapshot:
                waiter.done.set_result(None)
