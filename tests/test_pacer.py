"""Line-rate emulation's arithmetic, on a clock the test steps (vcom/port/pacer.py)."""

from __future__ import annotations

import pytest

from vcom.port.pacer import FIFO, RESUME_AT, LinePacer
from vcom.settings import LineSettings, Parity


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_uart_buffer_is_taken_at_once_then_the_line_rate():
    clock = Clock()
    pacer = LinePacer(LineSettings(baud=9600), clock)  # 8N1: 10 bits a character, 960 a second
    assert pacer.room() == FIFO
    pacer.took(FIFO)
    assert pacer.room() == 0 and pacer.backlog() == FIFO
    clock.now += 1.0
    assert pacer.room() == 960 and pacer.backlog() == FIFO - 960
    assert pacer.idle_in() == pytest.approx((FIFO - 960) / 960)
    assert pacer.ready_in() == pytest.approx((FIFO - 960 - (FIFO - RESUME_AT)) / 960)
    clock.now += 100
    assert pacer.backlog() == 0 and pacer.room() == FIFO and pacer.idle_in() == 0


def test_parity_and_stop_bits_slow_the_line():
    clock = Clock()
    pacer = LinePacer(LineSettings(baud=1100, data_bits=8, parity=Parity.EVEN), clock)  # 11 bits: 100/s
    pacer.took(100)
    assert pacer.idle_in() == pytest.approx(1.0)


def test_a_new_speed_sends_what_is_queued_at_that_speed():
    clock = Clock()
    pacer = LinePacer(LineSettings(baud=300), clock)  # 30 characters a second
    pacer.took(300)
    assert pacer.idle_in() == pytest.approx(10.0)
    pacer.set_settings(LineSettings(baud=3000))
    assert pacer.backlog() == 300 and pacer.idle_in() == pytest.approx(1.0)


def test_an_idle_line_does_not_bank_time():
    clock = Clock()
    pacer = LinePacer(LineSettings(baud=9600), clock)
    clock.now += 3600  # idle for an hour: still only the buffer's worth at once
    pacer.took(FIFO)
    assert pacer.room() == 0
