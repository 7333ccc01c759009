"""A live, full-screen view of every port and share: ``vcom status --watch``.

Split so that most of it can be tested without a terminal, in the order a snapshot travels:

* :mod:`.view`: what one port looks like (``PortView``), digested once per snapshot of
  ``vcom status --json``, with the rates each way made from two snapshots' byte counters;
* :mod:`.cells`: the ports table's cells and the widths of its columns for one frame;
* :mod:`.screen`: ``Dashboard``, the view's state (the latest snapshot, sorting, filter, page)
  and one frame of it for a given terminal size, and what a key press does;
* :mod:`.terminal`: the keyboard of a cbreak terminal and the refresh loop (``run``).
"""

from .cells import human_rate, lamp, sparkline
from .screen import Dashboard
from .terminal import run, split_keys
from .view import PortView, describe_settings

__all__ = ["Dashboard", "PortView", "describe_settings", "human_rate", "lamp", "run", "sparkline", "split_keys"]
