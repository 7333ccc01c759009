"""termios2 access and the one mapping from termios to ``LineSettings``.

A program configures its serial port with ``tcsetattr`` (or, for a rate such
as 250000 that has no ``Bxxx`` code, with ``TCSETS2`` and ``BOTHER``, as
pyserial does).  On a pseudo-terminal the manager sees those settings by
asking the master: the kernel redirects mode ioctls on a pty master to its
slave.  Only ``TCGETS2`` returns the exact rate (``c_ispeed``/``c_ospeed``);
``tcgetattr`` gives the ``Bxxx`` code alone, so everything here speaks
``struct termios2``.

Design:

* ``Termios2`` is an immutable value mirroring ``struct termios2``; the
  ioctl helpers pack and unpack it and nothing else touches raw bytes.
* ``to_line_settings`` is the only place that interprets termios flags as
  speed, framing and flow control.  Other layers never look at ``c_cflag``.
* The ioctl numbers are computed with the generic ``_IOR``/``_IOW``
  encoding (x86, arm, arm64, riscv, s390, loongarch), not copied as x86
  constants.  Alpha, MIPS, PowerPC and SPARC use another ioctl encoding and
  another ``struct termios`` layout; they are not supported.

Note: the pty driver forces ``CS8`` and clears ``PARENB`` on every set, so a
pty never reports the data bits or parity a program asked for; the mapping
still reads them, because under the interposer (``vcom.interposer``) the
manager patches in what the program asked for before calling it.

Every vcom pty carries a *tag* in two control characters the kernel never
uses (``c_cc[17]`` and ``c_cc[18]``; Linux defines 17 slots, up to VEOL2 =
16, in a 19-slot array).  The interposer recognises a vcom port by it with the
termios it reads anyway, instead of asking the manager about every tty.
"""

from __future__ import annotations

import errno
import fcntl
import struct
import termios
from dataclasses import dataclass, replace

from vcom.settings import FlowControl, LineSettings, Parity, StopBits

# struct termios2 from <asm-generic/termbits.h>: four tcflag_t, c_line,
# c_cc[NCCS=19], then c_ispeed and c_ospeed.  No padding: 16 + 1 + 19 = 36.
NCCS = 19
_TERMIOS2 = struct.Struct("=IIIIB19sII")
# struct termios is the same without the two speeds (TCGETS/TCSETS, TIOCSLCKTRMIOS).
_TERMIOS = struct.Struct("=IIIIB19s")
TERMIOS_SIZE = _TERMIOS.size
TERMIOS2_SIZE = _TERMIOS2.size
assert _TERMIOS2.size == 44 and _TERMIOS.size == 36

# Generic ioctl encoding from <asm-generic/ioctl.h>: 8 bits number, 8 bits
# type, 14 bits size, 2 bits direction.
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


TCGETS2 = _ioc(_IOC_READ, "T", 0x2A, _TERMIOS2.size)
TCSETS2 = _ioc(_IOC_WRITE, "T", 0x2B, _TERMIOS2.size)
# TCSETSF2 = "flush pending input, then set": on a pty master the flush hits
# the slave's input, i.e. what the program has not read yet.
TCSETSF2 = _ioc(_IOC_WRITE, "T", 0x2D, _TERMIOS2.size)

# The vcom tag: c_cc[17] = 'v', c_cc[18] = 'c' (see the module docstring).
TAG_SLOTS = (17, 18)
TAG = b"vc"

# Flags the Python termios module does not export on every version.
BOTHER = 0o010000  # c_cflag speed code: "the rate is in c_ispeed/c_ospeed"
CMSPAR = 0o10000000000  # mark/space parity (with PARODD: mark)
EXTPROC = 0o200000  # c_lflag; makes the pty report termios changes (TIOCPKT_IOCTL)

CBAUD = termios.CBAUD
CIBAUD = termios.CIBAUD
_IBSHIFT = 16  # CIBAUD = CBAUD << IBSHIFT
CRTSCTS = termios.CRTSCTS

# Standard speed codes, taken from the termios module so the values are the
# running platform's.  B0 maps to 0: "hang up", not a rate.
_RATE_OF_CODE: dict[int, int] = {
    getattr(termios, name): int(name[1:])
    for name in dir(termios)
    if name.startswith("B") and name[1:].isdigit()
}
_CODE_OF_RATE: dict[int, int] = {rate: code for code, rate in _RATE_OF_CODE.items()}

_DATA_BITS = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}

# The c_cc a Linux tty starts with (INIT_C_CC in <linux/tty.h>).
_STANDARD_CC = bytes(
    [
        0o003,  # VINTR ^C
        0o034,  # VQUIT ^\
        0o177,  # VERASE DEL
        0o025,  # VKILL ^U
        0o004,  # VEOF ^D
        0,  # VTIME
        1,  # VMIN
        0,  # VSWTC
        0o021,  # VSTART ^Q
        0o023,  # VSTOP ^S
        0o032,  # VSUSP ^Z
        0,  # VEOL
        0o022,  # VREPRINT ^R
        0o017,  # VDISCARD ^O
        0o027,  # VWERASE ^W
        0o026,  # VLNEXT ^V
        0,  # VEOL2
        0,
        0,
    ]
)


@dataclass(frozen=True, slots=True)
class Termios2:
    """``struct termios2``.  ``cc`` holds the 19 control characters."""

    iflag: int
    oflag: int
    cflag: int
    lflag: int
    line: int
    cc: bytes
    ispeed: int
    ospeed: int

    def __post_init__(self) -> None:
        if len(self.cc) != NCCS:
            raise ValueError(f"c_cc must hold {NCCS} bytes, not {len(self.cc)}")

    def pack(self) -> bytes:
        return _TERMIOS2.pack(
            self.iflag, self.oflag, self.cflag, self.lflag, self.line, self.cc, self.ispeed, self.ospeed
        )

    @classmethod
    def unpack(cls, raw: bytes) -> Termios2:
        """One instance per value seen lately: a port's termios rarely changes, it is read on every trapped
        ``TCGETS`` of a wrapped program, and building a frozen dataclass takes microseconds."""
        key = bytes(raw)
        found = _UNPACKED.get(key)
        if found is None:
            if len(_UNPACKED) >= _UNPACKED_MAX:
                _UNPACKED.clear()
            found = _UNPACKED[key] = cls(*_TERMIOS2.unpack(key))
        return found

    @classmethod
    def unpack_termios(cls, raw: bytes, current: Termios2) -> Termios2:
        """A ``struct termios`` (TCSETS: no speed fields) applied over ``current``,
        as the kernel does: the speeds follow the ``Bxxx`` codes, and a BOTHER
        code keeps the rate in force."""
        iflag, oflag, cflag, lflag, line, cc = _TERMIOS.unpack(raw)
        out_code = cflag & CBAUD
        rate = current.ospeed if out_code == BOTHER else _RATE_OF_CODE.get(out_code, 0)
        in_code = (cflag & CIBAUD) >> _IBSHIFT
        if not in_code:
            in_rate = rate
        else:
            in_rate = current.ispeed if in_code == BOTHER else _RATE_OF_CODE.get(in_code, 0)
        return cls(iflag, oflag, cflag, lflag, line, cc, in_rate, rate)

    def pack_termios(self) -> bytes:
        """As ``struct termios`` (TCGETS): the speed fields dropped."""
        return _TERMIOS.pack(self.iflag, self.oflag, self.cflag, self.lflag, self.line, self.cc)

    @property
    def tagged(self) -> bool:
        """Whether this is the termios of a vcom port (the tag is set)."""
        return bytes(self.cc[i] for i in TAG_SLOTS) == TAG

    def with_tag(self, tag: bytes = TAG) -> Termios2:
        cc = bytearray(self.cc)
        for slot, value in zip(TAG_SLOTS, tag, strict=True):
            cc[slot] = value
        return replace(self, cc=bytes(cc))


_UNPACKED: dict[bytes, Termios2] = {}
_UNPACKED_MAX = 256


def get_termios2(fd: int) -> Termios2:
    """``TCGETS2``.  On a pty master this returns the slave's termios."""
    return Termios2.unpack(fcntl.ioctl(fd, TCGETS2, bytes(_TERMIOS2.size)))


def set_termios2(fd: int, t: Termios2, *, flush_input: bool = False) -> None:
    """``TCSETS2`` (or ``TCSETSF2`` with ``flush_input``).  On a pty master
    this sets the slave's termios."""
    fcntl.ioctl(fd, TCSETSF2 if flush_input else TCSETS2, t.pack())


def lock_lflag_bits(fd: int, bits: int, cc_slots: tuple[int, ...] = ()) -> bool:
    """Lock ``bits`` of the tty's ``c_lflag`` and the control characters in
    ``cc_slots`` at their current values.

    ``TIOCSLCKTRMIOS``: the kernel then keeps them whatever a program sets
    (``unset_locked_termios``), the master's own sets included.  It needs
    CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE); returns False when the process
    lacks it.  On a pty master the lock applies to the slave.
    """
    cc = bytearray(NCCS)
    for slot in cc_slots:
        cc[slot] = 1
    locked = _TERMIOS.pack(0, 0, 0, bits, 0, bytes(cc))
    try:
        fcntl.ioctl(fd, termios.TIOCSLCKTRMIOS, locked)
    except PermissionError:
        return False
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return False
        raise
    return True


def speed_of(t: Termios2) -> int:
    """The exact output rate: ``c_ospeed`` for BOTHER, the table for a
    ``Bxxx`` code, 0 for B0 (hang up)."""
    code = t.cflag & CBAUD
    if code == BOTHER:
        return t.ospeed
    # An unknown code cannot come from the kernel (it rejects them), but
    # c_ospeed is the kernel's own decoding, so it is the best answer.
    return _RATE_OF_CODE.get(code, t.ospeed)


def with_speed(t: Termios2, baud: int) -> Termios2:
    """``t`` at ``baud``: the standard code when one exists, else BOTHER.

    CIBAUD is cleared so the input rate follows the output rate, as it does
    for a program that calls ``cfsetspeed``.
    """
    if baud < 0:
        raise ValueError(f"baud rate must not be negative, not {baud}")
    code = _CODE_OF_RATE.get(baud, BOTHER)
    cflag = (t.cflag & ~(CBAUD | CIBAUD)) | code
    return replace(t, cflag=cflag, ispeed=baud, ospeed=baud)


def fresh_uart_termios(baud: int = 9600) -> Termios2:
    """What a Linux serial driver gives a freshly probed UART (8250's
    ``init_termios``: tty_std_termios with CLOCAL and 9600), at ``baud``."""
    t = Termios2(
        iflag=termios.ICRNL | termios.IXON,
        oflag=termios.OPOST | termios.ONLCR,
        cflag=termios.CS8 | termios.CREAD | termios.HUPCL | termios.CLOCAL,
        lflag=(
            termios.ISIG
            | termios.ICANON
            | termios.ECHO
            | termios.ECHOE
            | termios.ECHOK
            | termios.ECHOCTL
            | termios.ECHOKE
            | termios.IEXTEN
        ),
        line=0,
        cc=_STANDARD_CC,
        ispeed=0,
        ospeed=0,
    )
    return with_speed(t, baud)


def to_line_settings(t: Termios2, fallback_baud: int = 9600) -> LineSettings:
    """Speed, framing and flow control of ``t``.

    B0 is the hang-up request, not a rate: the result then carries
    ``fallback_baud`` and the caller tells hang-up apart with ``speed_of``.
    """
    baud = speed_of(t) or fallback_baud
    return LineSettings(
        baud=baud,
        data_bits=_DATA_BITS[t.cflag & termios.CSIZE],
        parity=_parity(t.cflag),
        stop_bits=StopBits.TWO if t.cflag & termios.CSTOPB else StopBits.ONE,
        flow_out=_flow_out(t),
        flow_in=_flow_in(t),
    )


def _parity(cflag: int) -> Parity:
    if not cflag & termios.PARENB:
        return Parity.NONE
    odd = bool(cflag & termios.PARODD)
    if cflag & CMSPAR:
        # termios(3): with CMSPAR, PARODD selects mark (1) else space (0).
        return Parity.MARK if odd else Parity.SPACE
    return Parity.ODD if odd else Parity.EVEN


def _flow_out(t: Termios2) -> FlowControl:
    # CRTSCTS is one bit for both directions; it wins over software flow.
    if t.cflag & CRTSCTS:
        return FlowControl.RTSCTS
    # IXON: the program's output obeys XON/XOFF from the device.
    return FlowControl.XONXOFF if t.iflag & termios.IXON else FlowControl.NONE


def _flow_in(t: Termios2) -> FlowControl:
    if t.cflag & CRTSCTS:
        return FlowControl.RTSCTS
    # IXOFF: the device's output is paced by XON/XOFF we send.
    return FlowControl.XONXOFF if t.iflag & termios.IXOFF else FlowControl.NONE
