"""Virtual ports: where ptys meet a link.

This is the only package that knows both sides.  A :class:`Port` turns what
the kernel tells about one pty (opens and closes through inotify, termios
changes and flushes through packet-mode status bytes) and what the program
asks through the interposer into link actions; a :class:`LinkGroup` joins
one or more ports to one network connection (several when a remote port is
*split*, e.g. two programs reading one GPS).

Back-pressure, in both directions, by not reading:

* program -> network: a pty master is read only while the link is writable.
  When it is not (connecting, socket buffer full, server sent
  FLOWCONTROL-SUSPEND) the program's ``write()`` blocks once the ~18 KiB pty
  buffer is full, as on a UART held off by flow control.
* network -> program: when a pty cannot take more (the program does not
  read), the link stops reading its socket and TCP pushes back on the
  server.  In a split group the link stops when every open member is full,
  or when one whose program reads has fallen ``SPLIT_BUFFER`` bytes behind:
  a reading member loses nothing.  A member whose program took nothing for
  ``STALL_TIME`` while the others waited is stalled: it keeps its newest
  ``SPLIT_BUFFER`` bytes and drops older ones (counted) until its program
  reads again, so one stalled reader holds the others back only that long.

A program's *session* runs from the first open vcom sees (or infers: a
program that opened, wrote and closed before the manager looked still left
an IN_OPEN event and its bytes in the pty) until everything it wrote has
been read from the pty.  Only then is the port closed for the remote: DTR and
RTS drop (HUPCL) after the last byte, not before, and the on-open linger
starts.  A UART drains its output on close; so does a vcom port, for at most
``CLOSING_WAIT`` (the serial driver's default closing_wait of 30 s) while the
remote cannot be reached, after which the rest is dropped and counted in
``lost_bytes``.

Ordering between settings and data (documented in README.md): a settings
change is sent to the server before every byte that vcom reads from the pty
after it learns of the change.  Under the interposer the manager learns of
it *in* the program's call and first takes every byte still queued in the
pty (sending it, or holding it with the settings it was written under while
the link cannot take it), so the order is exact.  Without the interposer the
kernel reports a termios change ahead of data already queued in the pty, so
bytes written just before ``tcsetattr`` and not yet read leave with the new
settings, as bytes still in a real UART's FIFO do after ``tcsetattr(TCSANOW)``.

Whose settings win in a split group: the first port (the one the others are
split from) while it is open; while it is closed, the member that has been
open longest.  Pinned values (``--data-bits`` and friends) of that port
always win over its program's.
"""

from .group import SPLIT_BUFFER, LinkGroup
from .port import Port
from .sessions import CLOSING_WAIT

__all__ = ["CLOSING_WAIT", "SPLIT_BUFFER", "LinkGroup", "Port"]
