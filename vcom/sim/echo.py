"""``sim:echo``: a loopback plug."""

from __future__ import annotations

from ..rfc2217 import LineState
from .uart import RX_QUEUE, Inputs, SimDevice


class EchoDevice(SimDevice):
    """A loopback plug: TX to RX, RTS to CTS, DTR to DSR and DCD."""

    name = "sim:echo"

    def _inputs(self) -> Inputs:
        return Inputs(cts=self._rts, dsr=self._dtr, dcd=self._dtr)

    def _transmitted(self, data: bytes) -> None:
        self._receive(data)

    def _break_sent(self) -> None:
        # The receiver sees the line held at space for longer than a character:
        # RFC 2217 NOTIFY-LINESTATE "break-detect".
        self._receive_line_state(int(LineState.BREAK))

    def _tx_held(self) -> bool:
        # What is sent comes back: while nobody reads, or the way back is full,
        # the transmit queue stops draining and writers feel it.
        return super()._tx_held() or self._paused or self._rx.pending >= RX_QUEUE
