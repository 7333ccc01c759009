"""Constants and enums of the codec: telnet commands and options (RFC 854 onwards), the COM-PORT-OPTION
command codes and values of RFC 2217, and the two roles.  No logic: every other module of the package names
bytes through these."""

from __future__ import annotations

import enum
import re

# -- Telnet (RFC 854) -------------------------------------------------------

IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250
GA = 249
EL = 248
EC = 247
AYT = 246
AO = 245
IP = 244
BRK = 243
DM = 242
NOP = 241
SE = 240

# Options.  BINARY is RFC 856, SGA RFC 858, ECHO RFC 857, COM-PORT RFC 2217.
BINARY = 0
ECHO = 1
SGA = 3
COM_PORT_OPTION = 44

# Two-byte telnet commands with no meaning for a serial link; RFC 854 makes
# them legal anywhere in the stream, so they are consumed silently.
_IGNORED_COMMANDS = frozenset({NOP, DM, BRK, IP, AO, AYT, EC, EL, GA})

_IAC_BYTE = bytes([IAC])
_IAC_IAC = _IAC_BYTE * 2
_IAC_RUN = re.compile(rb"\xff+")
_IAC_RUN_OF_4 = _IAC_BYTE * 4
_CR = 0x0D
_NUL = 0x00

# RFC 2217: "the Access Server ... responds with the command code plus 100".
SERVER_OFFSET = 100


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Command(enum.IntEnum):
    """COM-PORT-OPTION command codes as a client sends them (RFC 2217)."""

    SIGNATURE = 0
    SET_BAUDRATE = 1
    SET_DATASIZE = 2
    SET_PARITY = 3
    SET_STOPSIZE = 4
    SET_CONTROL = 5
    NOTIFY_LINESTATE = 6
    NOTIFY_MODEMSTATE = 7
    FLOWCONTROL_SUSPEND = 8
    FLOWCONTROL_RESUME = 9
    SET_LINESTATE_MASK = 10
    SET_MODEMSTATE_MASK = 11
    PURGE_DATA = 12


class Control(enum.IntEnum):
    """SET-CONTROL values (RFC 2217, "SET-CONTROL")."""

    FLOW_QUERY = 0
    FLOW_NONE = 1  # outbound, or both directions
    FLOW_XONXOFF = 2
    FLOW_HARDWARE = 3
    BREAK_QUERY = 4
    BREAK_ON = 5
    BREAK_OFF = 6
    DTR_QUERY = 7
    DTR_ON = 8
    DTR_OFF = 9
    RTS_QUERY = 10
    RTS_ON = 11
    RTS_OFF = 12
    INBOUND_FLOW_QUERY = 13
    INBOUND_FLOW_NONE = 14
    INBOUND_FLOW_XONXOFF = 15
    INBOUND_FLOW_HARDWARE = 16
    FLOW_DCD = 17
    FLOW_DTR = 18
    FLOW_DSR = 19


class Purge(enum.IntEnum):
    RECEIVE = 1
    TRANSMIT = 2
    BOTH = 3


class LineState(enum.IntFlag):
    TIMEOUT = 0x80
    TSRE = 0x40  # transfer shift register empty
    THRE = 0x20  # transfer holding register empty
    BREAK = 0x10
    FRAMING_ERROR = 0x08
    PARITY_ERROR = 0x04
    OVERRUN = 0x02
    DATA_READY = 0x01


class ModemState(enum.IntFlag):
    CD = 0x80
    RI = 0x40
    DSR = 0x20
    CTS = 0x10
    DELTA_CD = 0x08
    TRAILING_RI = 0x04
    DELTA_DSR = 0x02
    DELTA_CTS = 0x01
