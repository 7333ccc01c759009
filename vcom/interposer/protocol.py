"""The interposer protocol: text lines between an interposer and the manager.

No I/O here: parsing and formatting only, shared by the manager
(:mod:`.server`), the seccomp supervisor (:mod:`.supervisor`) and tests; the C
library (``preload.c``) writes and reads the same lines.

A connection starts with one header line, then carries requests, each
answered by one line, in order::

    header:   vcom1 KIND PID           KIND: preload | seccomp; PID: the program's
    request:  VERB RDEV ARG...         RDEV: st_rdev of the pty slave, decimal
    answer:   ok VALUE...              the call succeeds (values per verb)
              no                       not a vcom port of this manager, or not
                                       allowed: the caller passes the call to
                                       the kernel unchanged
              err ERRNO                the call fails with this errno

    verb      arguments             answer values   the program's call
    tcgets    -                     HEX44           TCGETS, TCGETS2, tcgetattr
    tcsets    now|drain|flush HEX   -               TCSETS*, TCSETS*2, tcsetattr
              [view]                                (HEX: struct termios, 36 bytes,
                                                    or struct termios2, 44 bytes)
                                                    with "view": the answer is the
                                                    one "view" gives, after the change,
                                                    and the asker's own watch (same
                                                    pid) is not told of the change
    modem     get|set|bis|bic BITS  BITS            TIOCMGET/SET/BIS/BIC (TIOCM_*)
    break     on|off|pulse MS       -               TIOCSBRK, TIOCCBRK, TCSBRK(0),
                                                    TCSBRKP, tcsendbreak; "pulse"
                                                    answers when the break is over
    miwait    MASK                  -               TIOCMIWAIT: answers once a line
                                                    in MASK (TIOCM_*) has changed
    icount    -                     11 numbers      TIOCGICOUNT: cts dsr rng dcd rx
                                                    tx frame overrun parity brk
                                                    buf_overrun
    drain     -                     -               tcdrain, TCSBRK(non-zero): answers
                                                    once the server has received all
                                                    the program wrote
    outq      -                     BYTES           TIOCOUTQ: written, not yet received
                                                    by the server
    flush     in|out|both           -               tcflush, TCFLSH
    view      -                     GEN HEX44 HEX44 TCGETS and TCGETS2 in the seccomp
                                                    supervisor: the port's view generation
                                                    (it counts the view's changes), the
                                                    program's view, and the pty's termios
                                                    it was made from
    watch     -                     GEN             the supervisor's notice connection
                                                    (vcom.interposer.viewcache): from
                                                    this answer on, the manager writes
                                                    "changed RDEV GEN" there in the same
                                                    step as every change of the port's
                                                    view, and "gone RDEV" when the port
                                                    is removed
    handoff   LISTENER HELD PID     -               the supervisor hands its seccomp
              (RDEV 0)                              listener to the manager, which then
                                                    answers the program's calls itself
                                                    (vcom.interposer.handoff); the two
                                                    numbers are the supervisor's fds

``HEX44`` is the program's view of the port as a ``struct termios2``: what
the pty holds, with the data bits, parity and CREAD the program asked for,
EXTPROC as the program set it and the tag hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "vcom1"
KINDS = ("preload", "seccomp")
MAX_LINE = 256  # the longest request: tcsets with 44 bytes in hex is about 120

VERBS = {
    "tcgets": (0, 0),
    "tcsets": (2, 3),
    "modem": (2, 2),
    "break": (1, 2),
    "miwait": (1, 1),
    "icount": (0, 0),
    "drain": (0, 0),
    "outq": (0, 0),
    "flush": (1, 1),
    "view": (0, 0),
    "watch": (0, 0),
    "handoff": (3, 3),
}
NOTICES = ("changed", "gone")
FLUSH_QUEUES = ("in", "out", "both")
SET_MODES = ("now", "drain", "flush")
MODEM_OPS = ("get", "set", "bis", "bic")
BREAK_OPS = ("on", "off", "pulse")
MAX_BREAK_MS = 60_000


class ProtocolError(ValueError):
    """A line that is not part of the protocol."""


@dataclass(frozen=True, slots=True)
class Header:
    kind: str
    pid: int


@dataclass(frozen=True, slots=True)
class Request:
    verb: str
    rdev: int
    args: tuple[str, ...]


def parse_header(line: bytes) -> Header:
    parts = _split(line)
    if len(parts) != 3 or parts[0] != VERSION or parts[1] not in KINDS:
        raise ProtocolError("expected 'vcom1 KIND PID'")
    return Header(kind=parts[1], pid=_number(parts[2]))


def parse_request(line: bytes) -> Request:
    parts = _split(line)
    if len(parts) < 2 or parts[0] not in VERBS:
        raise ProtocolError("expected 'VERB RDEV ARG...'")
    verb, rdev, args = parts[0], _number(parts[1]), tuple(parts[2:])
    least, most = VERBS[verb]
    if not least <= len(args) <= most:
        raise ProtocolError(f"{verb} takes {least} to {most} arguments")
    return Request(verb, rdev, args)


def header(kind: str, pid: int) -> bytes:
    return f"{VERSION} {kind} {pid}\n".encode()


def request(verb: str, rdev: int, *args: object) -> bytes:
    return " ".join([verb, str(rdev), *map(str, args)]).encode() + b"\n"


def ok(*values: object) -> bytes:
    return " ".join(["ok", *map(str, values)]).encode() + b"\n"


NO = b"no\n"


def err(errno: int) -> bytes:
    return f"err {errno}\n".encode()


def notice(kind: str, rdev: int, generation: int | None = None) -> bytes:
    return (f"{kind} {rdev}" if generation is None else f"{kind} {rdev} {generation}").encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Notice:
    """A line on a watch connection that answers nothing: ``changed`` (with the view's new generation)
    or ``gone``."""

    kind: str
    rdev: int
    generation: int = 0


def parse_notice(line: bytes) -> Notice | None:
    """The notice; None for any other line (an answer)."""
    parts = _split(line)
    if not parts or parts[0] not in NOTICES:
        return None
    if len(parts) != (3 if parts[0] == "changed" else 2):
        raise ProtocolError(f"a malformed {parts[0]!r} notice")
    return Notice(parts[0], *map(_number, parts[1:]))


@dataclass(frozen=True, slots=True)
class Answer:
    """``ok`` with values, ``no`` (let the kernel have it) or ``err`` with an errno."""

    status: str
    values: tuple[str, ...] = ()

    @property
    def errno(self) -> int:
        return int(self.values[0]) if self.status == "err" else 0


def parse_answer(line: bytes) -> Answer:
    parts = _split(line)
    if not parts or parts[0] not in ("ok", "no", "err"):
        raise ProtocolError("expected 'ok ...', 'no' or 'err ERRNO'")
    if parts[0] == "err" and (len(parts) != 2 or not parts[1].isdigit()):
        raise ProtocolError("expected 'err ERRNO'")
    return Answer(parts[0], tuple(parts[1:]))


def _split(line: bytes) -> list[str]:
    if len(line) > MAX_LINE:
        raise ProtocolError("line too long")
    try:
        return line.decode("ascii").split()
    except UnicodeDecodeError:
        raise ProtocolError("not ASCII") from None


def _number(text: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise ProtocolError(f"{text!r} is not a number")
    return int(text)
