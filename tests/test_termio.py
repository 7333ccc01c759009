"""termios2 access and the termios -> LineSettings mapping.

The mapping is checked on values; the ioctls on real pseudo-terminals, where
the master sees the slave's termios (what the manager relies on).
"""

from __future__ import annotations

import contextlib
import os
import termios
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vcom.settings import FlowControl, LineSettings, Parity, StopBits
from vcom.termio import (
    BOTHER,
    CMSPAR,
    CRTSCTS,
    EXTPROC,
    TCGETS2,
    TCSETS2,
    TCSETSF2,
    Termios2,
    fresh_uart_termios,
    get_termios2,
    lock_lflag_bits,
    set_termios2,
    speed_of,
    to_line_settings,
    with_speed,
)


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    """(master, slave) of a fresh pty; both closed after the test."""
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- ioctl numbers ---------------------------------------------------------


def test_ioctl_numbers_follow_the_generic_encoding() -> None:
    # <asm-generic/ioctls.h> values: _IOR('T', 0x2A, struct termios2) etc.
    assert TCGETS2 == 0x802C542A
    assert TCSETS2 == 0x402C542B
    assert TCSETSF2 == 0x402C542D


# -- values -----------------------------------------------------------------


def test_fresh_uart_termios_is_what_a_serial_driver_gives() -> None:
    t = fresh_uart_termios()
    assert t.cflag == termios.B9600 | termios.CS8 | termios.CREAD | termios.HUPCL | termios.CLOCAL
    assert t.iflag == termios.ICRNL | termios.IXON
    assert t.oflag == termios.OPOST | termios.ONLCR
    assert t.lflag == (
        termios.ISIG
        | termios.ICANON
        | termios.ECHO
        | termios.ECHOE
        | termios.ECHOK
        | termios.ECHOCTL
        | termios.ECHOKE
        | termios.IEXTEN
    )
    assert (t.ispeed, t.ospeed) == (9600, 9600)
    assert t.cc[termios.VINTR] == 3 and t.cc[termios.VMIN] == 1 and t.cc[termios.VTIME] == 0
    assert (t.cc[termios.VSTART], t.cc[termios.VSTOP]) == (0o21, 0o23)
    # A fresh tty obeys XON/XOFF (IXON), as stty -a shows on a real port.
    assert to_line_settings(t) == LineSettings(flow_out=FlowControl.XONXOFF)


def test_fresh_uart_termios_at_a_rate_without_code_uses_bother() -> None:
    t = fresh_uart_termios(250000)
    assert t.cflag & termios.CBAUD == BOTHER
    assert (t.ispeed, t.ospeed) == (250000, 250000)
    assert speed_of(t) == 250000


def test_with_speed_picks_the_standard_code_and_clears_a_separate_input_rate() -> None:
    t = replace(fresh_uart_termios(250000), cflag=fresh_uart_termios().cflag | termios.CIBAUD)
    t = with_speed(t, 115200)
    assert t.cflag & termios.CBAUD == termios.B115200
    assert t.cflag & termios.CIBAUD == 0
    assert speed_of(t) == 115200


def test_b0_is_hang_up_not_a_rate() -> None:
    t = with_speed(fresh_uart_termios(), 0)
    assert t.cflag & termios.CBAUD == termios.B0
    assert speed_of(t) == 0
    assert to_line_settings(t, fallback_baud=19200).baud == 19200


def test_bother_reads_the_exact_output_rate() -> None:
    base = fresh_uart_termios()
    t = replace(base, cflag=(base.cflag & ~termios.CBAUD) | BOTHER, ospeed=31250)
    assert speed_of(t) == 31250


@given(st.integers(min_value=1, max_value=4_000_000))
def test_with_speed_round_trips_every_rate(baud: int) -> None:
    t = with_speed(fresh_uart_termios(), baud)
    assert speed_of(t) == baud
    assert to_line_settings(t).baud == baud


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        with_speed(fresh_uart_termios(), -1)


def test_cc_must_have_19_bytes() -> None:
    with pytest.raises(ValueError):
        replace(fresh_uart_termios(), cc=bytes(32))


def test_pack_round_trips() -> None:
    t = replace(fresh_uart_termios(250000), line=2, lflag=EXTPROC)
    assert len(t.pack()) == 44
    assert Termios2.unpack(t.pack()) == t


_BASE = fresh_uart_termios()
_CS = {5: termios.CS5, 6: termios.CS6, 7: termios.CS7, 8: termios.CS8}


def _framed(data_bits: int, extra_cflag: int = 0, iflag: int = 0) -> Termios2:
    cflag = (_BASE.cflag & ~termios.CSIZE) | _CS[data_bits] | extra_cflag
    return replace(_BASE, cflag=cflag, iflag=iflag)


@pytest.mark.parametrize("data_bits", [5, 6, 7, 8])
def test_data_bits(data_bits: int) -> None:
    assert to_line_settings(_framed(data_bits)).data_bits == data_bits


@pytest.mark.parametrize(
    ("cflag", "parity"),
    [
        (0, Parity.NONE),
        (termios.PARODD, Parity.NONE),  # PARODD means nothing without PARENB
        (termios.PARENB, Parity.EVEN),
        (termios.PARENB | termios.PARODD, Parity.ODD),
        (termios.PARENB | CMSPAR | termios.PARODD, Parity.MARK),
        (termios.PARENB | CMSPAR, Parity.SPACE),
    ],
)
def test_parity(cflag: int, parity: Parity) -> None:
    assert to_line_settings(_framed(7, cflag)).parity is parity


@pytest.mark.parametrize(("cflag", "stop_bits"), [(0, StopBits.ONE), (termios.CSTOPB, StopBits.TWO)])
def test_stop_bits(cflag: int, stop_bits: StopBits) -> None:
    assert to_line_settings(_framed(8, cflag)).stop_bits is stop_bits


X, R, N = FlowControl.XONXOFF, FlowControl.RTSCTS, FlowControl.NONE


@pytest.mark.parametrize(
    ("cflag", "iflag", "flow_out", "flow_in"),
    [
        (0, 0, N, N),
        (0, termios.IXON, X, N),
        (0, termios.IXOFF, N, X),
        (0, termios.IXON | termios.IXOFF, X, X),
        (CRTSCTS, 0, R, R),
        (CRTSCTS, termios.IXON | termios.IXOFF, R, R),  # one hardware bit wins over software flow
    ],
)
def test_flow_control(cflag: int, iflag: int, flow_out: FlowControl, flow_in: FlowControl) -> None:
    settings = to_line_settings(_framed(8, cflag, iflag))
    assert (settings.flow_out, settings.flow_in) == (flow_out, flow_in)


# -- the kernel ---------------------------------------------------------------


def test_master_reads_what_the_slave_set_with_bother(pty_pair: tuple[int, int]) -> None:
    master, slave = pty_pair
    set_termios2(slave, replace(fresh_uart_termios(250000), cflag=fresh_uart_termios(250000).cflag | CRTSCTS))
    seen = get_termios2(master)
    assert seen.cflag & termios.CBAUD == BOTHER
    assert (seen.ispeed, seen.ospeed) == (250000, 250000)
    assert to_line_settings(seen) == LineSettings(250000, flow_out=R, flow_in=R)


def test_master_sets_the_slaves_termios(pty_pair: tuple[int, int]) -> None:
    master, slave = pty_pair
    set_termios2(master, fresh_uart_termios(115200))
    assert get_termios2(slave) == fresh_uart_termios(115200)
    # tcgetattr gives the program the standard code.
    assert termios.tcgetattr(slave)[4] == termios.B115200


def test_pty_forces_cs8_and_no_parity(pty_pair: tuple[int, int]) -> None:
    """Why data bits and parity need another source than the pty.  (The raw
    ioctl succeeds; glibc's tcsetattr may re-read and answer EINVAL.)"""
    master, slave = pty_pair
    asked = get_termios2(slave)
    cflag = (asked.cflag & ~termios.CSIZE) | termios.CS7 | termios.PARENB | termios.PARODD | termios.CSTOPB
    set_termios2(slave, replace(asked, cflag=cflag))
    settings = to_line_settings(get_termios2(master))
    assert (settings.data_bits, settings.parity) == (8, Parity.NONE)
    assert settings.stop_bits is StopBits.TWO  # the rest of the request is kept


def test_flush_input_set_drops_what_the_slave_has_not_read(pty_pair: tuple[int, int]) -> None:
    master, slave = pty_pair
    set_termios2(master, replace(fresh_uart_termios(), lflag=0))  # raw: no echo, no line editing
    os.write(master, b"unread")
    assert os.read(slave, 1) == b"u"  # the bytes reached the slave's line discipline
    set_termios2(master, get_termios2(master), flush_input=True)
    os.set_blocking(slave, False)
    with pytest.raises(BlockingIOError):
        os.read(slave, 100)


def test_locked_extproc_survives_a_program_clearing_lflag(pty_pair: tuple[int, int]) -> None:
    master, slave = pty_pair
    set_termios2(master, replace(fresh_uart_termios(), lflag=EXTPROC))
    if not lock_lflag_bits(master, EXTPROC):
        pytest.skip("locking termios needs CAP_SYS_ADMIN")
    set_termios2(slave, replace(get_termios2(slave), lflag=0, iflag=0))
    seen = get_termios2(master)
    assert seen.lflag == EXTPROC
    assert seen.iflag == 0  # the other bits still follow the program
