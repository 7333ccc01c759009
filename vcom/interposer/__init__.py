"""The interposer: the program-side half of a vcom port.

A pty carries data, speed, stop bits and flow control, but not what a UART
has besides: the pty driver forces 8 data bits and no parity on every
termios set (glibc's ``tcsetattr`` then fails with EINVAL for 7E1), and
modem lines (TIOCM*), break, TIOCMIWAIT and TIOCGICOUNT either fail with
ENOTTY or do nothing.  Only the program's own calls can carry them, so the
interposer catches those calls on vcom ports and hands them to the manager,
which answers as a UART would and forwards them to the remote port.

Three ways to reach a program, one protocol, one answer:

* ``vcom wrap PROGRAM`` (:mod:`.supervisor`): seccomp user notification.  The
  kernel stops the program at each terminal ioctl (BPF filters by request
  number, so other system calls never leave the kernel); the supervisor
  recognises vcom ports, asks the manager, writes the answer into the
  program's memory and lets every other call continue untouched.  It works
  for static binaries (Go, musl, ``gcc -static``) and for every process the
  program starts.  Once the manager has answered a call on one of its ports,
  the supervisor hands it the listener (:mod:`.handoff`) and the manager answers
  the trapped calls itself (:mod:`.calls` maps a call to requests for both).
* ``LD_PRELOAD`` of ``preload.c`` (:mod:`.build`), for dynamically linked
  programs started another way (``vcom preload-path``).
* ``vcom wrap-all on`` (:mod:`.wrapall`): the same library listed in
  ``/etc/ld.so.preload``, so that every dynamically linked program on the
  host is interposed on vcom ports, whoever starts it.

How a vcom port is recognised: its termios carries a tag in two control
characters the kernel does not use (:data:`vcom.termio.TAG`), so the check
costs nothing for a ``tcgetattr`` on another tty (the tag is in what the call
returns) and one ``TCGETS2`` for the rarer calls.  Everything else about the
port lives in the manager (:mod:`.view` holds each port's emulated state).

The protocol (:mod:`.protocol`) runs over the manager's Unix socket
(``interposer.sock``), one text line each way per call, after one header line
per connection naming the interposer's kind and the program's pid.  The
manager answers only a process that holds the port open (SO_PEERCRED and
``/proc/PID/fd``): driving a port's lines needs the same right as writing to
it.  When the manager cannot be reached, or says the fd is not one of its
ports, the call goes to the kernel unchanged: the program gets what an
unwrapped program gets, never a hang.
"""
