"""Simulated serial devices: ``sim:echo``, ``sim:gps`` and ``sim:modem``.

``vcom share sim:echo`` must work with no hardware, and the demo needs a
device that talks by itself.  Each simulator implements the
:class:`vcom.device.Device` protocol and behaves like the thing at the end of
a real UART, so whatever a client sees through vcom is what it would see on a
real line: the same settings answered back, the same speed, the same
back-pressure.

The shared model is a UART with two paced directions (:class:`Pacer`):

* *transmit*: :meth:`write` puts bytes into a bounded queue (a UART driver's
  buffer); the queue drains at the line rate into the simulated device.  A
  full queue makes :meth:`write` short and ``device_writable`` tells the
  server when half of it is free again.
* *receive*: what the device sends (the loopback, the NMEA sentences, the
  modem's answers) is queued and delivered to the sink at the line rate.

The line rate is ``baud / bits per character`` (start bit, data bits, parity
bit, stop bits), and delivery happens in small batches from a timer: never
more characters than the elapsed time allows, never a catch-up burst after
the loop was late.  Holds model flow control: a transmitter stops while the
line is in break, while CTS is off under RTS/CTS flow control, or while the
far end cannot take more; the receive side stops while the server paused
reading.  Nothing grows without bound: a loopback stops transmitting when its
receive side is full, a GPS drops sentences nobody is reading.  As on a real
line, characters shorter than 8 data bits lose their high bits, and bytes
queued while the line is held in break follow the break.

Everything runs on the caller's asyncio loop through two injectable
callables, ``clock`` and ``call_later``, which default to the running loop's.
Tests inject a simulated clock and step time deterministically, so pacing is
checked by counting characters per simulated second, not by wall time.

Modules: :mod:`.line` (line rate, timers, the pacer), :mod:`.uart` (the
common UART), :mod:`.echo`, :mod:`.gps`, :mod:`.modem`.
"""

from __future__ import annotations

from ..device import Device, DeviceError
from .echo import EchoDevice
from .gps import CENTER, GPS_BACKLOG, GpsDevice, gps_sentences, nmea_checksum, parse_position
from .line import MAX_BURST, TICK
from .modem import ModemDevice
from .uart import MAX_BAUD, RX_QUEUE, TX_LOW_WATER, TX_QUEUE, SimDevice

__all__ = [
    "CENTER", "GPS_BACKLOG", "MAX_BAUD", "MAX_BURST", "RX_QUEUE", "SIMULATORS", "TICK", "TX_LOW_WATER", "TX_QUEUE",
    "EchoDevice", "GpsDevice", "ModemDevice", "SimDevice",
    "gps_sentences", "nmea_checksum", "open_sim", "parse_position",
]

# -- Factory --------------------------------------------------------------------

SIMULATORS: dict[str, type[SimDevice]] = {
    "echo": EchoDevice,
    "gps": GpsDevice,
    "modem": ModemDevice,
}


def open_sim(spec: str) -> Device:
    """The simulated device named by ``spec`` ("sim:echo", "sim:gps", "sim:modem"), not yet opened."""
    kind, _, which = spec.strip().partition(":")
    factory = SIMULATORS.get(which.lower()) if kind.lower() == "sim" else None
    if factory is None:
        known = ", ".join(f"sim:{name}" for name in SIMULATORS)
        raise DeviceError(f"unknown simulated device {spec!r}; known: {known}")
    return factory()
