"""Hot-plug and network events for the manager, on its event loop, without threads.

Two kernel sources, each one non-blocking netlink socket in ``loop.add_reader``:

* **udev** (``pyudev.Monitor.from_netlink``, filtered to the ``tty`` and ``net``
  subsystems) reports serial devices that appear and disappear:
  ``on_tty_added(devnode)`` / ``on_tty_removed(devnode)``.  When udevd runs
  (``/run/udev/control`` exists) the monitor listens to udevd's re-broadcast,
  which comes after the rules ran, so the node has its final permissions and
  symlinks; without udevd (containers, minimal VMs) it listens to the kernel's
  own uevents, which come after devtmpfs created the node.

* **rtnetlink** (``AF_NETLINK``/``NETLINK_ROUTE`` joined to ``RTMGRP_LINK``,
  see rtnetlink(7)) reports ``on_link_up(ifname)`` when an interface becomes
  usable: ``IFF_UP`` and ``IFF_RUNNING`` both set after at least one was not.
  udev alone cannot say this: the kernel sends a uevent for a network
  interface only when it is added, removed, renamed or moved between
  namespaces, never when it goes up or gets a carrier.  An "add" is the wrong
  moment anyway: a new interface is down.  So the ``net`` uevents are used
  only if the rtnetlink socket cannot be opened, as a coarse fallback
  ("something changed on ``ifname``").

Both kinds of netlink event are per network namespace for network interfaces:
a manager in a namespace sees only that namespace's links.

The link state of every interface is seeded from an ``RTM_GETLINK`` dump
sent on the same socket when watching starts, so interfaces that are up
already do not fire.  If the socket's queue overflows (``ENOBUFS``: events
were lost), a new dump is requested and compared with what was known, so an
interface that came up meanwhile still fires, once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if.h>
NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
IFLA_IFNAME = 3
IFF_UP = 0x1
IFF_RUNNING = 0x40
_USABLE = IFF_UP | IFF_RUNNING

# struct nlmsghdr: u32 len, u16 type, u16 flags, u32 seq, u32 pid
_NLMSGHDR = struct.Struct("=IHHII")
# struct ifinfomsg: u8 family, u8 pad, u16 type, i32 index, u32 flags, u32 change
_IFINFOMSG = struct.Struct("=BxHiII")
# struct rtattr: u16 len, u16 type
_RTATTR = struct.Struct("=HH")

_RECV_SIZE = 65536
_RCVBUF = 1 << 20  # a burst of interfaces (a VPN, a bridge with many ports) fits without ENOBUFS
_READS_PER_WAKEUP = 64  # bound the work per wakeup; the fd stays readable for the rest
_UDEVD_CONTROL = "/run/udev/control"

LinkCallback = Callable[[str], None]
TtyCallback = Callable[[str], None]


class DeviceEvent(Protocol):
    """The part of ``pyudev.Device`` the watcher reads from an event."""

    @property
    def action(self) -> str | None: ...

    @property
    def subsystem(self) -> str | None: ...

    @property
    def device_node(self) -> str | None: ...

    @property
    def sys_name(self) -> str: ...


# -- rtnetlink messages --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkMessage:
    """One ``RTM_NEWLINK``/``RTM_DELLINK`` (link fields set), or ``NLMSG_DONE``/``NLMSG_ERROR``."""

    type: int
    seq: int
    pid: int = 0  # the port id of the socket that asked: ours for dump replies
    ifindex: int = 0
    ifname: str = ""
    flags: int = 0
    error: int = 0  # negative errno of an NLMSG_ERROR

    @property
    def usable(self) -> bool:
        return self.type == RTM_NEWLINK and self.flags & _USABLE == _USABLE


def dump_request(seq: int) -> bytes:
    """``RTM_GETLINK`` with ``NLM_F_DUMP``: every interface's current state, as RTM_NEWLINK replies."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_messages(data: bytes) -> Iterator[LinkMessage]:
    """The netlink messages in one datagram; other message types are skipped."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return  # truncated or corrupt: nothing after it can be trusted
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += _align(length)
        if kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= _IFINFOMSG.size:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
            name = _ifname(body[_IFINFOMSG.size :])
            yield LinkMessage(kind, seq, pid, ifindex=index, ifname=name, flags=flags)
        elif kind == NLMSG_DONE:
            yield LinkMessage(kind, seq, pid)
        elif kind == NLMSG_ERROR and len(body) >= 4:
            yield LinkMessage(kind, seq, pid, error=struct.unpack_from("=i", body)[0])


def _ifname(attrs: bytes) -> str:
    offset = 0
    while offset + _RTATTR.size <= len(attrs):
        length, kind = _RTATTR.unpack_from(attrs, offset)
        if length < _RTATTR.size:
            break
        if kind == IFLA_IFNAME:
            raw = attrs[offset + _RTATTR.size : offset + length]
            return raw.split(b"\0", 1)[0].decode(errors="replace")
        offset += _align(length)
    return ""


def _align(length: int) -> int:
    return (length + 3) & ~3  # NLMSG_ALIGN / RTA_ALIGN: 4 bytes


class LinkTracker:
    """Last known usability of every interface, by ifindex (names can change)."""

    def __init__(self) -> None:
        self._usable: dict[int, bool] = {}

    def seed(self, msg: LinkMessage) -> None:
        """Record a state without calling it a change."""
        if msg.type == RTM_DELLINK:
            self._usable.pop(msg.ifindex, None)
        else:
            self._usable[msg.ifindex] = msg.usable

    def update(self, msg: LinkMessage) -> bool:
        """Record a state; True when the interface just became usable.

        An unknown ifindex counts as not usable before: it is an interface
        created after the seed, and such an interface starts down.
        """
        was = self._usable.get(msg.ifindex, False)
        self.seed(msg)
        return msg.usable and not was


# -- the watcher ----------------------------------------------------------------------------


class UdevWatcher:
    """Calls back on the loop when a link comes up or a tty device comes or goes."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_link_up: LinkCallback,
        on_tty_added: TtyCallback,
        on_tty_removed: TtyCallback,
    ) -> None:
        self._loop = loop
        self._on_link_up = on_link_up
        self._on_tty_added = on_tty_added
        self._on_tty_removed = on_tty_removed
        self._monitor: Any = None  # pyudev.Monitor
        self._rtnl: socket.socket | None = None
        self._links = LinkTracker()
        self._portid = 0  # our netlink address: replies to our dump carry it, notifications do not
        self._dump_seq = 0
        self._seeded = False  # the first dump is complete

    @property
    def watching_ttys(self) -> bool:
        return self._monitor is not None

    @property
    def watching_links(self) -> bool:
        """True when link-up events come from rtnetlink (precise), not from the udev fallback."""
        return self._rtnl is not None

    def start(self) -> bool:
        """Open both sockets; False (with the reason logged) when neither can be opened."""
        if self._monitor is None:
            self._start_udev()
        if self._rtnl is None:
            self._start_rtnetlink()
        return self.watching_ttys or self.watching_links

    def close(self) -> None:
        if self._monitor is not None:
            self._loop.remove_reader(self._monitor.fileno())
            # pyudev has no close(): dropping the last reference frees the libudev monitor and its socket.
            self._monitor = None
        self._stop_rtnetlink()

    def _stop_rtnetlink(self) -> None:
        if self._rtnl is not None:
            self._loop.remove_reader(self._rtnl.fileno())
            self._rtnl.close()
            self._rtnl = None
        self._seeded = False

    # -- udev

    def _start_udev(self) -> None:
        source = "udev" if os.path.exists(_UDEVD_CONTROL) else "kernel"
        try:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
            monitor.filter_by("tty")
            monitor.filter_by("net")
            monitor.start()
        except (ImportError, OSError, ValueError) as exc:  # no libudev, or netlink refused (containers)
            log.warning("not watching device hot-plug: udev netlink unavailable (%s)", exc)
            return
        self._monitor = monitor
        self._loop.add_reader(monitor.fileno(), self._on_udev_readable)
        log.debug("watching tty and net uevents from %s", source)

    def _on_udev_readable(self) -> None:
        monitor = self._monitor
        for _ in range(_READS_PER_WAKEUP):
            try:
                device = monitor.poll(timeout=0)
            except OSError as exc:  # ENOBUFS: the kernel dropped events; later ones still come
                log.warning("udev monitor: %s", exc)
                continue
            if device is None:
                return
            self.device_event(device)

    def device_event(self, device: DeviceEvent) -> None:
        """Act on one udev event (a ``pyudev.Device`` from the monitor)."""
        action, subsystem = device.action, device.subsystem
        if subsystem == "tty" and device.device_node:
            if action == "add":
                _call(self._on_tty_added, device.device_node)
            elif action == "remove":
                _call(self._on_tty_removed, device.device_node)
        elif subsystem == "net" and self._rtnl is None and action in ("add", "move", "change"):
            # Fallback only: rtnetlink, when open, reports these too, with the up/running flags.
            _call(self._on_link_up, device.sys_name)

    # -- rtnetlink

    def _start_rtnetlink(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        except OSError as exc:
            log.warning("link changes come from udev only: rtnetlink unavailable (%s)", exc)
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
            self._portid = sock.getsockname()[0]
            self._rtnl = sock
            self._request_dump()
        except OSError as exc:
            sock.close()
            self._rtnl = None
            log.warning("link changes come from udev only: rtnetlink unavailable (%s)", exc)
            return
        self._loop.add_reader(sock.fileno(), self._on_rtnl_readable)

    def _request_dump(self) -> None:
        # Subscribed before the dump is sent: a change during the dump is
        # queued after it or reflected in it, never lost between the two.
        assert self._rtnl is not None
        self._dump_seq += 1
        self._rtnl.send(dump_request(self._dump_seq))

    def _on_rtnl_readable(self) -> None:
        sock = self._rtnl
        assert sock is not None  # the reader is removed when the socket is closed
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    # Unexpected and likely to repeat: stop rather than spin, and let udev's coarse events stand in.
                    log.error("rtnetlink failed (%s); link changes come from udev only from now on", exc)
                    self._stop_rtnetlink()
                    return
                log.warning("rtnetlink queue overflowed; reading every link's state again")
                self._request_dump()
                continue
            for msg in parse_messages(data):
                self._link_message(msg)

    def _link_message(self, msg: LinkMessage) -> None:
        is_reply = msg.seq == self._dump_seq and msg.pid == self._portid
        if msg.type in (NLMSG_DONE, NLMSG_ERROR):
            if is_reply:
                if msg.error:
                    log.warning("rtnetlink link dump failed: %s", os.strerror(-msg.error))
                self._seeded = True
            return
        if is_reply and not self._seeded:
            # The first dump describes how things were when watching began: not news.
            self._links.seed(msg)
        elif self._links.update(msg) and msg.ifname:
            # A notification is news even while the first dump is still
            # arriving: better one early call than a lost one.
            _call(self._on_link_up, msg.ifname)


def _call(callback: Callable[[str], None], arg: str) -> None:
    """Run a callback; one that raises must not stop the events queued behind it."""
    try:
        callback(arg)
    except Exception:
        log.exception("event callback %r(%r) failed", callback, arg)
