"""Option negotiation (RFC 1143 "Q method", without the queue since this codec never asks to disable an
option): which options each role wants, and how a received WILL, WONT, DO or DONT is answered.  A request is
answered only when it changes the option's state, which is what prevents negotiation loops with peers that
repeat themselves.  :class:`Negotiation` is a mixin of :class:`vcom.rfc2217.connection.Connection`, whose
state it uses."""

from __future__ import annotations

import enum

from .codes import BINARY, COM_PORT_OPTION, DO, DONT, IAC, SGA, WILL, WONT, Role
from .events import ComPortOption, OptionChange, _Events


class _Q(enum.Enum):
    """One side of one option.  WANTNO is never needed: we never disable."""

    NO = "no"
    WANTYES = "wantyes"  # we asked, no answer yet
    YES = "yes"


# What each role performs itself (WILL) and lets the peer perform (DO).
# BINARY both ways keeps 8-bit data intact (RFC 856); SGA both ways is what
# every serial server expects; COM-PORT-OPTION is performed by the client
# (RFC 2217: the client sends WILL, the access server answers DO).
_WANTED_LOCAL = {
    Role.CLIENT: frozenset({BINARY, SGA, COM_PORT_OPTION}),
    Role.SERVER: frozenset({BINARY, SGA}),
}
_WANTED_REMOTE = {
    Role.CLIENT: frozenset({BINARY, SGA}),
    Role.SERVER: frozenset({COM_PORT_OPTION, BINARY, SGA}),
}
_OPENING = {
    Role.CLIENT: ((WILL, BINARY), (DO, BINARY), (WILL, SGA), (DO, SGA), (WILL, COM_PORT_OPTION)),
    Role.SERVER: ((DO, COM_PORT_OPTION), (WILL, BINARY), (DO, BINARY), (WILL, SGA), (DO, SGA)),
}


class Negotiation:
    """Answers the peer's WILL, WONT, DO and DONT and reports what changed."""

    role: Role
    _local: dict[int, _Q]
    _remote: dict[int, _Q]
    _refused_local: set[int]
    _refused_remote: set[int]
    _com_port: bool | None
    _outgoing: bytearray
    _binary_in: bool

    def _negotiate(self, verb: int, option: int, out: _Events) -> None:
        """RFC 1143: answer only what changes the option's state."""
        local = verb in (DO, DONT)  # DO/DONT are about what we perform
        positive = verb in (DO, WILL)
        table = self._local if local else self._remote
        wanted = option in (_WANTED_LOCAL if local else _WANTED_REMOTE)[self.role]
        agree, refuse = (WILL, WONT) if local else (DO, DONT)
        before = table.get(option, _Q.NO)

        if positive:
            if before is _Q.NO:
                if wanted:
                    after = _Q.YES
                    self._outgoing += bytes((IAC, agree, option))
                else:
                    after = _Q.NO
                    self._refuse(option, local, refuse)
            else:
                after = _Q.YES  # YES: repeated; WANTYES: the answer to our request
        else:
            after = _Q.NO
            if before is _Q.YES:
                # RFC 854: a demand to disable must be acknowledged.
                self._outgoing += bytes((IAC, refuse, option))
            # NO: repeated or unasked; WANTYES: our request was refused.
        table[option] = after
        if option == BINARY and not local:
            self._binary_in = after is _Q.YES
        self._report(option, local, before is _Q.YES, after is _Q.YES, out)

    def _com_port_in_use(self, out: _Events) -> None:
        """A COM-PORT-OPTION subnegotiation while our request is unanswered.

        pyserial's client takes a server's DO 44 that arrives before its own
        WILL 44 as the answer to it, and then never sends WILL 44 (RFC 1143
        would have it answer).  A peer speaking the option has agreed to it.
        """
        local = self.role is Role.CLIENT
        table = self._local if local else self._remote
        if table.get(COM_PORT_OPTION) is _Q.WANTYES:
            table[COM_PORT_OPTION] = _Q.YES
            self._report(COM_PORT_OPTION, local, False, True, out)

    def _refuse(self, option: int, local: bool, refuse: int) -> None:
        refused = self._refused_local if local else self._refused_remote
        if option not in refused:
            refused.add(option)
            self._outgoing += bytes((IAC, refuse, option))

    def _report(self, option: int, local: bool, before: bool, after: bool, out: _Events) -> None:
        # The side of COM-PORT-OPTION that matters is the client's: the client
        # performs it (WILL), the server lets it (DO).  Whatever the peer says
        # about the other side (ser2net answers DO 44 with WONT 44) is moot.
        if option == COM_PORT_OPTION and local == (self.role is Role.CLIENT):
            if after != self._com_port:
                self._com_port = after
                out.add(ComPortOption(after))
        elif before != after:
            out.add(OptionChange(option, local, after))
