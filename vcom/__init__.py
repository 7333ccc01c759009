"""vcom: virtual serial ports that reach remote serial device servers."""

import os as _os

__version__ = "0.1.0"

# VCOM_PURE_PYTHON=1: run as vcom runs where its C extensions (vcom._speedups, vcom._relay) could not be
# built, with no compiler or no Python headers: the RFC 2217 codec's data loops in Python, and every port's
# data on the event loop.  `make test-python` runs the whole suite that way.
PURE_PYTHON = _os.environ.get("VCOM_PURE_PYTHON", "") not in ("", "0")
