"""pyserial's RFC 2217 server, single-threaded, on 127.0.0.1, for end-to-end tests.

The protocol side is pyserial's own ``serial.rfc2217.PortManager``, the same
class as in pyserial's ``examples/rfc2217_server.py``; only the plumbing
differs from that example:

- it binds 127.0.0.1 only (the example binds every interface);
- one ``select`` loop instead of a reader thread and a poller thread, so a
  disconnect is handled at once (the example needs up to its 3 s read timeout
  before it serves the next client);
- a new client replaces the current one, like ser2net's ``kickolduser``, so a
  reconnecting client is never queued behind a session it already abandoned;
- the serial device is usually a pty slave, which has no modem lines (TIOCM*
  ioctls fail with ENOTTY).  :class:`PtySerial` reports the
  inputs as low and accepts DTR/RTS changes, as a UART with nothing attached
  would, instead of letting the first modem-state poll end the session.

As in the example, the device's settings are restored when a client leaves.

Usage: ``python pyserial_server.py --port PORT [-v] DEVICE``
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import select
import signal
import socket
import sys
import time

import serial
import serial.rfc2217

MODEM_POLL_INTERVAL = 1.0  # seconds, as the example's status line poller


class PtySerial(serial.Serial):
    """A pyserial port that tolerates a tty without modem lines."""

    def _modem_ioctl(self, action) -> None:  # type: ignore[no-untyped-def]
        try:
            action()
        except OSError as exc:
            if exc.errno not in (errno.ENOTTY, errno.EINVAL):
                raise

    def _update_dtr_state(self) -> None:
        self._modem_ioctl(super()._update_dtr_state)

    def _update_rts_state(self) -> None:
        self._modem_ioctl(super()._update_rts_state)

    @property
    def cts(self) -> bool:
        return False

    @property
    def dsr(self) -> bool:
        return False

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return False


class Session:
    """One client: PortManager parses its telnet stream and drives the serial port."""

    def __init__(self, port: serial.Serial, sock: socket.socket, logger: logging.Logger | None) -> None:
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.manager = serial.rfc2217.PortManager(port, self, logger=logger)
        self.port = port

    def write(self, data: bytes) -> None:
        """PortManager's connection interface: telnet replies go straight to the socket."""
        self.sock.sendall(data)

    def from_network(self) -> bool:
        """Handle readable socket data; False when the client has gone."""
        try:
            data = self.sock.recv(4096)
        except OSError:
            return False
        if not data:
            return False
        try:
            self.port.write(b"".join(self.manager.filter(data)))
        except serial.SerialException as exc:
            # e.g. glibc's tcsetattr refusing 7E1 on a pty: report, keep serving.
            logging.error("device refused a request: %s", exc)
        return True

    def from_device(self, data: bytes) -> None:
        self.sock.sendall(b"".join(self.manager.escape(data)))


def serve(device: str, port: int, logger: logging.Logger | None) -> None:
    ser = PtySerial()  # not opened yet: the lines are set low first
    ser.port = device
    ser.dtr = False  # no remote "terminal" yet, as in the example
    ser.rts = False
    ser.open()
    saved = ser.get_settings()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    logging.info("serving %s on 127.0.0.1:%d", device, port)
    session: Session | None = None
    next_poll = time.monotonic() + MODEM_POLL_INTERVAL

    def end_session() -> None:
        nonlocal session
        if session is None:
            return
        logging.info("client disconnected")
        session.sock.close()
        session = None
        ser.dtr = False
        ser.rts = False
        ser.apply_settings(saved)  # the client may have changed them over RFC 2217

    while True:
        # The device is read only during a session, as in the example: what the
        # UART receives meanwhile waits in the tty for the next client.
        watched: list[object] = [listener]
        if session is not None:
            watched += [session.sock, ser.fileno()]
        readable, _, _ = select.select(watched, [], [], max(0.0, next_poll - time.monotonic()))
        if listener in readable:
            end_session()
            sock, address = listener.accept()
            logging.info("client connected from %s:%d", *address)
            ser.dtr = True
            ser.rts = True
            session = Session(ser, sock, logger)
        if session is not None and session.sock in readable and not session.from_network():
            end_session()
        if session is not None and ser.fileno() in readable:
            data = os.read(ser.fileno(), 4096)
            try:
                session.from_device(data)
            except OSError:
                end_session()
        if time.monotonic() >= next_poll:
            next_poll = time.monotonic() + MODEM_POLL_INTERVAL
            if session is not None:
                session.manager.check_modem_lines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every RFC 2217 command")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.device, args.port, logging.getLogger("rfc2217.server") if args.verbose else None)


if __name__ == "__main__":
    main()
