"""The rate-limited log: the first of a kind at once, the rest counted and said once per interval."""

from __future__ import annotations

import asyncio
import logging

import pytest

from vcom.ratelog import RateLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_problem_costs_one_line_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rate = RateLog(logging.getLogger("vcom.test"), interval=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="vcom.test"):
        assert rate.warning(("ttyV0", "junk"), "%s: ignored %s", "ttyV0", "IAC 0")
        for _ in range(12_345):
            assert not rate.warning(("ttyV0", "junk"), "%s: ignored %s", "ttyV0", "IAC 1")
        assert rate.warning(("ttyV1", "junk"), "ttyV1: ignored")  # another port is another kind
        clock.now += 60
        assert rate.warning(("ttyV0", "junk"), "%s: ignored %s", "ttyV0", "IAC 2")
    assert [r.getMessage() for r in caplog.records] == [
        "ttyV0: ignored IAC 0", "ttyV1: ignored", "ttyV0: ignored IAC 2 (12,345 more in the last 60 s)"]


def test_the_count_is_said_when_the_interval_ends_even_if_the_problem_stopped(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        rate = RateLog(logging.getLogger("vcom.test"), interval=0.05)
        rate.info("kind", "refused a client")
        rate.info("kind", "refused a client")
        rate.info("kind", "refused a client")
        await asyncio.sleep(0.2)

    with caplog.at_level(logging.INFO, logger="vcom.test"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == [
        "refused a client", "refused a client (2 more in the last 0.05 s)"]
