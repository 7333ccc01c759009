"""A real tty (``/dev/ttyUSB0``, ``/dev/ttyS0``, a pty slave...) as a :class:`vcom.device.Device`.

Design
------
The tty is opened with ``os.open`` (non-blocking, ``O_NOCTTY``) and driven
with :mod:`vcom.termio`, the project's ``struct termios2`` code, rather than
through a ``serial.Serial`` object:

* RFC 2217 sets flow control per direction (outbound: ``IXON`` obeys XOFF
  from the device; inbound: ``IXOFF`` sends XOFF to it); pyserial has one
  ``xonxoff`` switch for both.
* The settings in force are read back with ``TCGETS2`` and turned into
  :class:`LineSettings` by ``termio.to_line_settings``, the one place that
  interprets termios, so what the server answers is what the driver kept (a
  pty keeps ``CS8``/no parity whatever is asked; a driver may round a rate).
* ``TCSETS2`` with ``BOTHER`` gives any rate (250000...), as pyserial does.
* Opening does not touch DTR/RTS (``serial.Serial`` raises them on open);
  the server decides when the lines go up.

The fd lives on the running asyncio loop: ``add_reader`` reports input,
writes go straight to the fd and the rest waits in a bounded buffer drained
by ``add_writer``.  A full buffer makes :meth:`SerialDevice.write` short and
``device_writable`` says when it has drained: the server then stops reading
its clients, so a slow UART holds them back instead of growing memory.

Modem input lines (CTS/DSR/DCD/RI): Linux has no fd event for them; the only
waiting call, ``TIOCMIWAIT``, blocks a thread.  So one shared poller per loop
calls ``TIOCMGET`` every 50 ms on the devices whose server currently wants
signal changes (:meth:`SerialDevice.watch_signals`) and stops ticking when
none does.  A tty that refuses the modem ioctls (a pty: ``ENOTTY``) keeps
working; its lines are reported as unknown (``None``).

Known gaps:

* Line errors (parity, framing, overrun) and received breaks are not
  observable through plain ``read()`` on Linux without ``PARMRK`` byte
  stuffing; :meth:`DeviceSink.device_line_state` is never called.  ``INPCK``
  is off, so a byte with a parity error is passed on as received.
* 1.5 stop bits exist only with 5 data bits (a 16550 uses 1.5 where termios
  says ``CSTOPB``); asked for with more data bits, two are set and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import struct
import termios
import weakref
from dataclasses import replace

from . import termio
from .device import Device, DeviceError, DeviceSink
from .settings import FlowControl, LineSettings, Parity, Signals, StopBits

log = logging.getLogger(__name__)

MODEM_POLL_INTERVAL = 0.05  # seconds between TIOCMGET rounds while someone listens
READ_CHUNK = 4096  # bytes per read(): about 0.35 s of a 115200 line
TX_BUFFER = 16384  # bytes held for the fd beyond what the kernel takes

# <asm-generic/ioctls.h>; the termios module does not export them.
TIOCSBRK = 0x5427
TIOCCBRK = 0x5428

# errno values meaning "this tty has no such control" rather than a failure.
_UNSUPPORTED = frozenset({errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
# errno values meaning the device itself went away (USB unplug, hang-up).
_GONE = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF, errno.EPIPE})

_CSIZE_OF_BITS = {5: termios.CS5, 6: termios.CS6, 7: termios.CS7, 8: termios.CS8}
_FRAMING_FLAGS = termios.CSIZE | termios.PARENB | termios.PARODD | termio.CMSPAR | termios.CSTOPB | termio.CRTSCTS
_INPUT_FLAGS = {"cts": termios.TIOCM_CTS, "dsr": termios.TIOCM_DSR, "dcd": termios.TIOCM_CAR, "ri": termios.TIOCM_RNG}


class SerialDevice:
    """A tty device node driven on the asyncio loop."""

    def __init__(self, path: str) -> None:
        self.name = path
        self.path = path
        self._fd: int | None = None
        self._sink: DeviceSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._original: termio.Termios2 | None = None
        self._settings = LineSettings()
        self._out = bytearray()
        self._want_writable = False
        self._reading = False
        self._paused = False
        self._modem_supported = True
        self._break_supported = True
        self._watching = False
        self._lines: int | None = None  # last TIOCMGET, None when unknown
        self._break = False
        self._counts = {"bytes_in": 0, "bytes_out": 0, "breaks": 0, "purges_rx": 0, "purges_tx": 0}

    # -- Device protocol: life cycle -------------------------------------------

    def open(self, sink: DeviceSink) -> None:
        if self._fd is not None:
            raise DeviceError(f"{self.path}: already open")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise DeviceError(f"{self.path}: open it from a coroutine on the asyncio loop") from None
        fd = _open_tty(self.path)
        try:
            self._original = termio.get_termios2(fd)
        except OSError as exc:
            os.close(fd)
            raise DeviceError(f"{self.path}: not a terminal device ({exc.strerror})") from None
        self._fd, self._sink, self._loop = fd, sink, loop
        self._out.clear()
        self._want_writable = self._paused = self._break = False
        self._modem_supported = self._break_supported = True
        self._lines = None
        try:
            # Start from the rate and framing the tty already has, in raw mode.
            self._settings = self.apply_settings(termio.to_line_settings(self._original))
        except DeviceError:
            self._fd = self._sink = None
            os.close(fd)
            raise
        self._read_lines()
        self._start_reading()

    def close(self) -> None:
        fd = self._fd
        if fd is None:
            return
        self._stop_using_fd()
        # Leave the tty as we found it, as ser2net does; best effort, the
        # device may already be gone.
        with contextlib.suppress(OSError):
            if self._original is not None:
                termio.set_termios2(fd, self._original)
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCNXCL)
        os.close(fd)
        self._sink = None

    # -- Device protocol: data ---------------------------------------------------

    def write(self, data: bytes) -> int:
        if self._fd is None:
            raise DeviceError(f"{self.path}: not open")
        taken = 0
        if not self._out:
            taken = self._write_fd(data)
            if self._fd is None:  # the write found the device gone
                return 0
        room = TX_BUFFER - len(self._out)
        queued = data[taken : taken + room]
        if queued:
            self._out += queued
            taken += len(queued)
            self._loop.add_writer(self._fd, self._on_writable)  # type: ignore[union-attr]
        if taken < len(data):
            self._want_writable = True
        self._counts["bytes_in"] += taken
        return taken

    def purge(self, *, receive: bool, transmit: bool) -> None:
        if self._fd is None:
            return
        if transmit:
            self._counts["purges_tx"] += 1
            self._out.clear()
            self._flush(termios.TCOFLUSH)
            self._drained()
        if receive:
            self._counts["purges_rx"] += 1
            self._flush(termios.TCIFLUSH)

    def pause_reading(self) -> None:
        self._paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        self._paused = False
        self._start_reading()

    # -- Device protocol: line settings --------------------------------------------

    def apply_settings(self, settings: LineSettings) -> LineSettings:
        if self._fd is None:
            raise DeviceError(f"{self.path}: not open")
        try:
            current = termio.get_termios2(self._fd)
            try:
                termio.set_termios2(self._fd, _raw_termios(current, settings))
            except OSError as exc:
                if exc.errno in _GONE:
                    raise
                # A driver refuses a rate it cannot make (EINVAL); keep what is in force.
                log.info("%s: %s refused: %s", self.path, settings.describe(), exc.strerror)
            self._settings = self._read_back()
        except OSError as exc:
            raise DeviceError(f"{self.path}: line settings: {exc.strerror}") from None
        return self._settings

    @property
    def settings(self) -> LineSettings:
        return self._settings

    # -- Device protocol: signals ----------------------------------------------------

    def set_dtr(self, on: bool) -> bool:
        return self._set_line(termios.TIOCM_DTR, on)

    def set_rts(self, on: bool) -> bool:
        return self._set_line(termios.TIOCM_RTS, on)

    def set_break(self, on: bool) -> bool:
        if self._fd is None or not self._break_supported:
            return False
        try:
            fcntl.ioctl(self._fd, TIOCSBRK if on else TIOCCBRK)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise DeviceError(f"{self.path}: break: {exc.strerror}") from None
            self._break_supported = False
            self._break = False
            return False
        if self._break and not on:
            self._counts["breaks"] += 1
        self._break = on
        return on

    @property
    def signals(self) -> Signals:
        lines = self._lines
        if lines is None:
            return Signals()
        return Signals(
            dtr=bool(lines & termios.TIOCM_DTR),
            rts=bool(lines & termios.TIOCM_RTS),
            **{name: bool(lines & flag) for name, flag in _INPUT_FLAGS.items()},
        )

    def watch_signals(self, on: bool) -> None:
        """Whether the server wants ``device_signals`` for input line changes now.

        Only watched devices are polled, so an idle share costs no wake-ups.
        """
        self._watching = on
        self._update_watch()

    # -- Status ------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Bytes written to the device (``bytes_in``) and read from it (``bytes_out``),
        breaks sent, purges, and bytes waiting for the fd."""
        return {**self._counts, "tx_queued": len(self._out)}

    # -- Internals: I/O ------------------------------------------------------------------

    def _write_fd(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self._fd, data)  # type: ignore[arg-type]
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._gone(f"write failed: {exc.strerror}")
            return 0

    def _on_writable(self) -> None:
        written = self._write_fd(self._out)
        if self._fd is None:
            return
        del self._out[:written]
        if not self._out:
            self._drained()

    def _drained(self) -> None:
        if self._fd is not None and not self._out:
            self._loop.remove_writer(self._fd)  # type: ignore[union-attr]
        if self._want_writable and self._sink is not None:
            self._want_writable = False
            self._sink.device_writable()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)  # type: ignore[arg-type]
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in _GONE:
                self._gone(f"read failed: {exc.strerror}")
                return
            raise
        if not data:
            # A tty reads end-of-file once it was hung up (USB unplug, the
            # pty master closed): nothing will come from this fd again.
            self._gone("hung up")
            return
        self._counts["bytes_out"] += len(data)
        if self._sink is not None:
            self._sink.device_data(data)

    def _start_reading(self) -> None:
        if self._fd is not None and not self._reading and not self._paused:
            self._loop.add_reader(self._fd, self._on_readable)  # type: ignore[union-attr]
            self._reading = True

    def _stop_reading(self) -> None:
        if self._fd is not None and self._reading:
            self._loop.remove_reader(self._fd)  # type: ignore[union-attr]
        self._reading = False

    def _flush(self, queue: int) -> None:
        with contextlib.suppress(OSError):
            termios.tcflush(self._fd, queue)  # type: ignore[arg-type]

    def _stop_using_fd(self) -> None:
        self._stop_reading()
        if self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)
        _poller_for(self._loop).discard(self)
        self._out.clear()
        self._want_writable = False

    def _gone(self, reason: str) -> None:
        """The device went away: stop touching the fd, then tell the server."""
        if self._fd is None:
            return
        self._stop_using_fd()
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.close(fd)
        self._lines = None
        sink, self._sink = self._sink, None
        log.warning("%s: device gone: %s", self.path, reason)
        if sink is not None:
            sink.device_gone(f"{self.path}: {reason}")

    # -- Internals: settings and lines -------------------------------------------------

    def _read_back(self) -> LineSettings:
        settings = termio.to_line_settings(termio.get_termios2(self._fd), self._settings.baud)  # type: ignore[arg-type]
        if settings.data_bits == 5 and settings.stop_bits is StopBits.TWO:
            # A UART sends 1.5 stop bits for CSTOPB with 5 data bits.
            settings = settings.with_(stop_bits=StopBits.ONE_POINT_FIVE)
        return settings

    def _set_line(self, flag: int, on: bool) -> bool:
        if self._fd is None or not self._modem_supported:
            return False
        try:
            fcntl.ioctl(self._fd, termios.TIOCMBIS if on else termios.TIOCMBIC, struct.pack("i", flag))
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise DeviceError(f"{self.path}: modem control: {exc.strerror}") from None
            self._no_modem_lines()
            return False
        self._read_lines()
        return bool(self._lines is not None and self._lines & flag)

    def _read_lines(self) -> int | None:
        """TIOCMGET into ``self._lines``; None (and no more tries) when the tty has no modem lines."""
        if self._fd is None or not self._modem_supported:
            return None
        try:
            raw = fcntl.ioctl(self._fd, termios.TIOCMGET, struct.pack("i", 0))
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                self._no_modem_lines()
            return None
        self._lines = struct.unpack("i", raw)[0]
        return self._lines

    def _no_modem_lines(self) -> None:
        self._modem_supported = False
        self._lines = None
        self._update_watch()

    def _update_watch(self) -> None:
        if self._loop is None:
            return
        poller = _poller_for(self._loop)
        if self._watching and self._modem_supported and self._fd is not None:
            poller.add(self)
        else:
            poller.discard(self)

    def _poll_lines(self) -> None:
        before = self._lines
        after = self._read_lines()
        if after is None or before is None or self._sink is None:
            return
        mask = termios.TIOCM_CTS | termios.TIOCM_DSR | termios.TIOCM_CAR | termios.TIOCM_RNG
        if (before ^ after) & mask:
            self._sink.device_signals(self.signals)


def _raw_termios(t: termio.Termios2, settings: LineSettings) -> termio.Termios2:
    """``t`` in raw mode with ``settings``.

    CLOCAL: a shared device is "local", its DCD never hangs the fd up
    (ser2net's ``local`` option); CREAD: the receiver is on.  HUPCL is left
    as the tty had it, so the driver drops DTR/RTS on the last close.
    """
    cflag = t.cflag & ~_FRAMING_FLAGS
    cflag |= _CSIZE_OF_BITS[settings.data_bits] | termios.CLOCAL | termios.CREAD
    if settings.parity is not Parity.NONE:
        cflag |= termios.PARENB
        if settings.parity in (Parity.ODD, Parity.MARK):
            cflag |= termios.PARODD
        if settings.parity in (Parity.MARK, Parity.SPACE):
            cflag |= termio.CMSPAR  # termios(3): with PARODD mark, without space
    if settings.stop_bits is not StopBits.ONE:
        cflag |= termios.CSTOPB
    # CRTSCTS is one bit for both directions: either side asking for it sets it.
    hardware = FlowControl.RTSCTS in (settings.flow_out, settings.flow_in)
    if hardware:
        cflag |= termio.CRTSCTS
    iflag = 0
    if settings.flow_out is FlowControl.XONXOFF and not hardware:
        iflag |= termios.IXON
    if settings.flow_in is FlowControl.XONXOFF and not hardware:
        iflag |= termios.IXOFF
    cc = bytearray(t.cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    raw = replace(t, iflag=iflag, oflag=0, cflag=cflag, lflag=0, cc=bytes(cc))
    return termio.with_speed(raw, settings.baud)


def _open_tty(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceError(f"{path}: no such device") from None
    except OSError as exc:
        raise DeviceError(f"{path}: {exc.strerror}") from None
    try:
        # Advisory lock, as pyserial's exclusive=True: two sharing programs
        # that both honour it never interleave on one UART.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DeviceError(f"{path}: in use by another program") from None
    # TIOCEXCL: the kernel refuses further opens by non-root programs.
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCEXCL)
    return fd


# -- The shared modem-line poller ------------------------------------------------------


class _ModemPoller:
    """One timer per loop for all watched devices; it exists only while one is watched."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._devices: set[SerialDevice] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, device: SerialDevice) -> None:
        self._devices.add(device)
        if self._timer is None:
            self._timer = self._loop.call_later(MODEM_POLL_INTERVAL, self._tick)

    def discard(self, device: SerialDevice) -> None:
        self._devices.discard(device)
        if not self._devices and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        for device in list(self._devices):
            device._poll_lines()
        if self._devices:
            self._timer = self._loop.call_later(MODEM_POLL_INTERVAL, self._tick)


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ModemPoller] = weakref.WeakKeyDictionary()


def _poller_for(loop: asyncio.AbstractEventLoop | None) -> _ModemPoller:
    if loop is None:
        loop = asyncio.get_running_loop()
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = _ModemPoller(loop)
    return poller


# -- Factory ---------------------------------------------------------------------------


def open_device(spec: str) -> Device:
    """The device named by ``spec``, not yet opened: ``sim:...`` or a tty path."""
    if spec.strip().lower().startswith("sim:"):
        from .sim import open_sim  # simulators are only loaded when asked for

        return open_sim(spec)
    if not os.path.exists(spec):
        raise DeviceError(f"{spec}: no such device")
    return SerialDevice(spec)
