"""Run a command with a private /etc: an overlay in a mount namespace of its own.

``unshare -m --propagation private python private_etc.py UPPER WORK -- CMD...``
mounts an overlay of the real /etc with UPPER as its writable layer, then
runs CMD.  Whatever CMD writes to /etc (``/etc/ld.so.preload`` above all)
lands in UPPER, never in the machine's /etc, and the next run with the same
UPPER sees it again.  Tests of ``vcom wrap-all`` use this so that no test
touches the host's file.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    upper, work, separator, *command = argv
    if separator != "--" or not command:
        print("usage: private_etc.py UPPER WORK -- CMD...", file=sys.stderr)
        return 2
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/etc,upperdir={upper},workdir={work}",
                    "/etc"], check=True)
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
