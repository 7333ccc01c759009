"""``vcom share``: one serial device served to many network clients.

A :class:`Share` owns one :class:`vcom.device.Device` (a tty or a simulator)
and one listener: an RFC 2217 server, a raw TCP server or a UDP socket.
Everything runs on the caller's asyncio loop; the share is the device's
:class:`vcom.device.DeviceSink`.

Data paths
----------
*Device to clients.*  Every client gets every byte the device sends.  Each
client has its own bounded queue (``client_buffer`` bytes) in front of its
socket, so a client that cannot keep up never stalls the others and never
makes memory grow: in front of its socket only a small asyncio buffer and a
fixed kernel send buffer (``SOCKET_SEND_BUFFER``, not the auto-tuned
megabytes) hold data, and when its queue is full the ``slow_client`` policy
acts on that client alone (``drop``: its oldest queued bytes are discarded and
counted; ``disconnect``: it is closed).  When *every* client is at least half
full, the share calls ``device.pause_reading()`` instead: with nobody able to
take data, holding the device back (its UART buffer fills, then hardware
flow control stops the far end) loses less than dropping the same bytes for
everyone.  Reading resumes as soon as one client is down to a quarter.

*Clients to device.*  Data from any client goes to the device in arrival
order.  ``Device.write`` takes what fits; when it comes back short, the share
stops reading from *all* client sockets until ``device_writable``, and what a
client sent after the data that did not fit (including RFC 2217 commands)
waits in that client's inbox, so a SET-BAUDRATE never overtakes the bytes
sent before it.  The TCP windows then push back on the clients.

RFC 2217 (server role, RFC 2217 "Com Port Option: Introduction" onwards)
--------------------------------------------------------------------------
The telnet bytes are handled by the sans-I/O codec :mod:`vcom.rfc2217`;
this module only deals in its events.

* Every SET is answered with the value in force after applying it (the
  device's return value); value 0 is a query and is answered with the
  current value.  A value the RFC does not define is answered with the
  current one, unchanged.
* SET-CONTROL 1-3 set flow control "outbound/both" (RFC 2217): both
  directions, as pyserial's client expects; 14-16 set inbound only.  DCD,
  DTR and DSR flow control (17-19) cannot be expressed in termios: they are
  answered with the outbound flow control in force.
* DTR/RTS are answered with the level read back from the device.  A tty
  without modem lines (a pty) has none to read: the answer is then the level
  last set, because a client such as pyserial takes any other answer as a
  refusal and will not open the port.
* Notifications: the initial LINESTATE-MASK is 0 and the initial
  MODEMSTATE-MASK is 255 (RFC 2217, SET-LINESTATE-MASK / SET-MODEMSTATE-MASK
  discussions).  NOTIFY-MODEMSTATE carries the lines plus delta bits, ANDed
  with the client's mask, and is sent only when non-zero.  The current state
  is sent once when a client agrees to COM-PORT-OPTION, once after each
  SET-MODEMSTATE-MASK, and on every poll (an empty NOTIFY-MODEMSTATE, as
  pyserial's ``poll_modem`` sends): pyserial's client cannot report CTS/DSR
  before it has received one.
* PURGE-DATA purges the device's buffers and, for the receive direction,
  what the share still holds for that client.  Data the client sent before
  the purge has always been handed to the device by then (inbox order), so
  the device purge is what discards it.
* FLOWCONTROL-SUSPEND / RESUME from a client stop and restart the device
  data sent to that client; meanwhile it queues under the slow-client policy.
* ``control="first"``: only the longest-connected client may change settings,
  signals, break and device buffers; another client's SET is answered with
  the value in force and not applied.

Like a UART being opened, DTR and RTS go up when the first client connects;
when the last one leaves they drop and the line settings go back to what they
were before it came (ser2net does the same), so one client's 300 baud does
not stay for the next.

UDP
---
One socket.  A client is an address that sent at least one datagram; it is
kept for ``UDP_CLIENT_TTL`` seconds after its last datagram.  When
``max_clients`` addresses are known, a new one replaces the one heard from
least recently (a UDP client cannot say goodbye, so a full table of stale
addresses must not lock out a live one).  Device data goes to every known
client in datagrams of at most ``UDP_DATAGRAM`` (1024) bytes: that fits the
smallest IPv6 path MTU (1280) with headers, so no datagram is ever
fragmented, and a lost fragment would lose the whole datagram.  UDP promises
nothing: a datagram lost on the way is a hole in the byte stream, and two
datagrams may arrive in either order, so a client sees the device's bytes in
the wrong order.  Use UDP for data whose messages fit in one datagram and
tolerate loss (sensor readings, NMEA sentences), and TCP otherwise.  When
the device is full the share stops reading the socket; the kernel then drops
what does not fit in its receive buffer.

When the device goes away (USB unplug), every client is disconnected, new
connections are closed at once, and the share tries to reopen the device
every ``REOPEN_INTERVAL`` seconds.

Modules: :mod:`.server` (the share: device, listener, clients, data both
ways), :mod:`.clients` (what is kept per client; TCP clients),
:mod:`.commands` (RFC 2217 commands), :mod:`.udp` (UDP clients by address),
:mod:`.limits` (sizes and times).  The configuration, :class:`ShareConfig`,
is in :mod:`vcom.config`.
"""

from __future__ import annotations

from ..config import (
    CONTROL_POLICIES,
    MAX_CLIENT_BUFFER,
    MAX_CLIENTS,
    MIN_CLIENT_BUFFER,
    PROTOCOLS,
    SLOW_CLIENT_POLICIES,
    ShareConfig,
    ShareError,
)
from .limits import (
    CONTROL_BACKLOG,
    REOPEN_INTERVAL,
    SOCKET_SEND_BUFFER,
    TRANSPORT_HIGH_WATER,
    UDP_CLIENT_TTL,
    UDP_DATAGRAM,
    UDP_SEND_BACKLOG,
)
from .server import Share

__all__ = [
    "CONTROL_BACKLOG", "CONTROL_POLICIES", "MAX_CLIENTS", "MAX_CLIENT_BUFFER", "MIN_CLIENT_BUFFER", "PROTOCOLS",
    "REOPEN_INTERVAL", "SLOW_CLIENT_POLICIES", "SOCKET_SEND_BUFFER", "TRANSPORT_HIGH_WATER", "UDP_CLIENT_TTL",
    "UDP_DATAGRAM", "UDP_SEND_BACKLOG", "Share", "ShareConfig", "ShareError",
]
