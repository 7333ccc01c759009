"""The share's answers to RFC 2217 commands: every SET applied to the device and answered with the
value in force (see the package docstring for the rules).  A mixin of :class:`vcom.share.server.Share`,
whose state it uses."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import ShareConfig
from ..device import Device, DeviceError
from ..rfc2217 import (
    ComPortOption,
    Control,
    Event,
    FlowControlResume,
    FlowControlSuspend,
    ModemState,
    NotifyModemState,
    ProtocolError,
    Purge,
    PurgeData,
    SetBaudRate,
    SetControl,
    SetDataSize,
    SetLineStateMask,
    SetModemStateMask,
    SetParity,
    SetStopSize,
    Signature,
    break_control,
    dtr_control,
    flow_from_control,
    flow_in_control,
    flow_out_control,
    parity_code,
    parity_from_code,
    rts_control,
    stop_code,
    stop_from_code,
)
from ..settings import LineSettings
from .clients import Client, StreamClient

log = logging.getLogger(__name__)


class Rfc2217Commands:
    """Applies one client's RFC 2217 commands to the device and answers them."""

    name: str
    config: ShareConfig
    _device: Device | None
    _dtr: bool
    _rts: bool
    _break: bool
    _modem: ModemState

    if TYPE_CHECKING:  # the share's, used here
        def _may_control(self, client: Client) -> bool: ...

        def _update_device_reading(self) -> None: ...

    def _command(self, client: Client, event: Event) -> None:
        match event:
            case Signature(text=""):
                client.send_command(Signature(f"vcom {self.config.device}"))
            case Signature(text=text):
                client.signature = text
            case SetBaudRate(baud=baud):
                settings = self._change(client, baud=baud) if baud else self._settings()
                client.send_command(SetBaudRate(settings.baud))
            case SetDataSize(bits=bits):
                settings = self._change(client, data_bits=bits) if bits in (5, 6, 7, 8) else self._settings()
                client.send_command(SetDataSize(settings.data_bits))
            case SetParity(parity=code):
                parity = parity_from_code(code)
                settings = self._change(client, parity=parity) if parity else self._settings()
                client.send_command(SetParity(parity_code(settings.parity)))
            case SetStopSize(stop=code):
                stop = stop_from_code(code)
                settings = self._change(client, stop_bits=stop) if stop else self._settings()
                client.send_command(SetStopSize(stop_code(settings.stop_bits)))
            case SetControl(value=value):
                answer = self._control(client, value)
                if answer is not None:
                    client.send_command(SetControl(answer))
            case PurgeData(purge=value):
                self._purge(client, value)
            case FlowControlSuspend():
                client.suspended = True
            case FlowControlResume():
                client.suspended = False
                if isinstance(client, StreamClient):
                    client.flush()
            case SetLineStateMask(mask=mask):
                client.linestate_mask = mask
                client.send_command(SetLineStateMask(mask))
            case SetModemStateMask(mask=mask):
                client.modemstate_mask = mask
                client.send_command(SetModemStateMask(mask))
                if mask:
                    client.send_command(NotifyModemState(self._modem & mask))
            case NotifyModemState():
                # A poll (pyserial sends an empty NOTIFY-MODEMSTATE): the current lines.
                client.send_command(NotifyModemState(self._modem & client.modemstate_mask))
            case ComPortOption(enabled=True):
                # The initial report: pyserial's client has no CTS/DSR before one arrives.
                client.send_command(NotifyModemState(self._modem & client.modemstate_mask))
            case ProtocolError(message=message):
                log.debug("share %s: from %s: %s", self.name, client.peer, message)
            case _:
                pass  # option changes, NOTIFY-LINESTATE polls: nothing to answer

    def _settings(self) -> LineSettings:
        assert self._device is not None
        return self._device.settings

    def _change(self, client: Client, **changes: object) -> LineSettings:
        """Apply ``changes`` if this client may; the settings in force either way."""
        current = self._settings()
        if not self._may_control(client):
            return current
        try:
            wanted = current.with_(**changes)
        except ValueError:
            return current
        if wanted == current:
            return current
        try:
            return self._device.apply_settings(wanted)  # type: ignore[union-attr]
        except DeviceError as exc:
            log.warning("share %s: %s: %s", self.name, wanted.describe(), exc)
            return self._settings()

    def _control(self, client: Client, value: int) -> Control | None:
        """SET-CONTROL (RFC 2217): apply, then the value in force to answer with."""
        flow = flow_from_control(value)
        if flow is not None:
            direction, mode = flow
            # Values 1-3 are "outbound/both"; 14-16 are inbound only.
            changes = {"flow_out": mode, "flow_in": mode} if direction == "out" else {"flow_in": mode}
            settings = self._change(client, **changes)
            return flow_out_control(settings.flow_out) if direction == "out" else flow_in_control(settings.flow_in)
        match value:
            case Control.FLOW_QUERY | Control.FLOW_DCD | Control.FLOW_DTR | Control.FLOW_DSR:
                return flow_out_control(self._settings().flow_out)
            case Control.INBOUND_FLOW_QUERY:
                return flow_in_control(self._settings().flow_in)
            case Control.BREAK_ON | Control.BREAK_OFF:
                if self._may_control(client):
                    self._break = self._device.set_break(value == Control.BREAK_ON)  # type: ignore[union-attr]
                return break_control(self._break)
            case Control.BREAK_QUERY:
                return break_control(self._break)
            case Control.DTR_ON | Control.DTR_OFF:
                if self._may_control(client):
                    self._dtr = self._set_line("dtr", value == Control.DTR_ON)
                return dtr_control(self._line("dtr"))
            case Control.DTR_QUERY:
                return dtr_control(self._line("dtr"))
            case Control.RTS_ON | Control.RTS_OFF:
                if self._may_control(client):
                    self._rts = self._set_line("rts", value == Control.RTS_ON)
                return rts_control(self._line("rts"))
            case Control.RTS_QUERY:
                return rts_control(self._line("rts"))
        log.info("share %s: %s sent unknown SET-CONTROL value %d", self.name, client.peer, value)
        return None

    def _set_line(self, name: str, on: bool) -> bool:
        device = self._device
        assert device is not None
        in_force = device.set_dtr(on) if name == "dtr" else device.set_rts(on)
        # No modem lines to read back (a pty): the level is what was last set.
        return in_force if getattr(device.signals, name) is not None else on

    def _line(self, name: str) -> bool:
        read = getattr(self._device.signals, name) if self._device is not None else None
        return read if read is not None else (self._dtr if name == "dtr" else self._rts)

    def _purge(self, client: Client, value: int) -> None:
        receive = value in (Purge.RECEIVE, Purge.BOTH)
        transmit = value in (Purge.TRANSMIT, Purge.BOTH)
        if not (receive or transmit):
            log.info("share %s: %s sent unknown PURGE-DATA value %d", self.name, client.peer, value)
            return
        if self._may_control(client):
            self._device.purge(receive=receive, transmit=transmit)  # type: ignore[union-attr]
        if receive:
            # Asked for, so not counted as dropped.
            client.outbox.clear()
            self._update_device_reading()
        client.send_command(PurgeData(value))
