"""What a shared serial device looks like to the server side.

``vcom share`` serves one device to many network clients.  The device is a
real tty (``/dev/ttyUSB0``, driven through pyserial's termios code) or a
simulated one (``sim:echo``, ``sim:gps``, ``sim:modem``).  Both sit behind
this one interface so the server never asks which it has.

Everything runs on the manager's single asyncio loop: a device reports data
and line changes through its :class:`DeviceSink` and never blocks.  Writes
use back-pressure: :meth:`Device.write` takes what it can and the sink's
``device_writable`` says when to offer the rest, so a slow UART holds the
clients back instead of growing a buffer.
"""

from __future__ import annotations

from typing import Protocol

from .settings import LineSettings, Signals


class DeviceError(Exception):
    """The device cannot be opened or used; one-line reason."""


class DeviceSink(Protocol):
    """Where a device reports what happens on its side of the line."""

    def device_data(self, data: bytes) -> None:
        """Bytes the device sent (its UART received them)."""

    def device_signals(self, signals: Signals) -> None:
        """CTS, DSR, DCD or RI changed (the whole current state is passed)."""

    def device_line_state(self, state: int) -> None:
        """Line events as RFC 2217 line-state bits (break detected, framing/parity/overrun error)."""

    def device_writable(self) -> None:
        """The device can take more data after a short write."""

    def device_gone(self, reason: str) -> None:
        """The device went away (unplugged, closed); the server decides whether to reopen it."""


class Device(Protocol):
    name: str

    def open(self, sink: DeviceSink) -> None:
        """Start the device; from now on it reports to ``sink``.  Raises DeviceError."""

    def close(self) -> None: ...

    def write(self, data: bytes) -> int:
        """Queue bytes for the device's transmitter; returns how many were taken (0 = full, wait for
        ``device_writable``)."""

    def apply_settings(self, settings: LineSettings) -> LineSettings:
        """Configure the line; returns the settings actually in force (RFC 2217 answers with these)."""

    @property
    def settings(self) -> LineSettings: ...

    def set_dtr(self, on: bool) -> bool:
        """Returns the DTR state actually in force."""

    def set_rts(self, on: bool) -> bool: ...

    def set_break(self, on: bool) -> bool: ...

    @property
    def signals(self) -> Signals:
        """All six lines: DTR and RTS as driven, CTS/DSR/DCD/RI as read."""

    def purge(self, *, receive: bool, transmit: bool) -> None:
        """Discard unsent output (transmit) and/or unread input (receive)."""

    def pause_reading(self) -> None:
        """Stop reporting data until resume_reading (every client is full)."""

    def resume_reading(self) -> None: ...
