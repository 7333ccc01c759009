"""Port and share definitions: what one ``[[port]]`` or ``[[share]]`` table of the config file, or one
``vcom add`` / ``vcom share`` command, asks for, checked completely before anything is created.

Every refusal is a :class:`ConfigError` that knows which setting it is about, so that the file's
messages name the key (``retry_max``) and the command's name the option as typed (``--retry-max``).
Reading and editing the file is :mod:`vcom.configfile`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .settings import Parity, StopBits
from .target import Target, TargetError, join_host_port, parse_target

if TYPE_CHECKING:
    from .tls import ServerTls

CONNECT_POLICIES = ("on-open", "always")
PORT_TLS_FILES = ("tls_ca", "tls_cert", "tls_key")
PORT_TLS_KEYS = (*PORT_TLS_FILES, "tls_server_name", "tls_insecure")
SHARE_TLS_KEYS = ("tls_cert", "tls_key", "tls_client_ca")  # all files

PROTOCOLS = ("rfc2217", "tcp", "udp")
SLOW_CLIENT_POLICIES = ("drop", "disconnect")
CONTROL_POLICIES = ("all", "first")
MIN_CLIENT_BUFFER = 1024
MAX_CLIENT_BUFFER = 64 * 1024 * 1024
MAX_CLIENTS = 1024

_NO_VALUE = object()
_MENTION = re.compile(r"\{(tls_[a-z_]+)\}")
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class ConfigError(ValueError):
    """A definition that cannot be used: one line, and the setting it is about (``key``) if there is one.

    A reason that names another setting writes it as ``{tls_key}``: the file's messages show the key, the
    command's the option (``--tls-key``)."""

    def __init__(self, reason: str, key: str | None = None, value: object = _NO_VALUE, *,
                 label: str | None = None) -> None:
        self.reason = reason
        self.key = key
        self.value = value
        super().__init__(self.named(label or key) if key else self.spelled())

    def spelled(self, spell: Callable[[str], str] = str) -> str:
        """The reason with every ``{key}`` it mentions spelled by ``spell``."""
        return _MENTION.sub(lambda m: spell(m.group(1)), self.reason)

    def named(self, name: str, spell: Callable[[str], str] = str) -> str:
        """The message with the setting called ``name`` (a TOML key, or an option as typed)."""
        if self.value is _NO_VALUE:
            return f"{name} {self.spelled(spell)}"
        return f"{name} {_show(self.value)} {self.spelled(spell)}"


class ShareError(ConfigError):
    """A share that cannot be configured or started, with a one-line reason."""


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# -- ports ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortConfig:
    device: str
    target: str
    baud: int = 9600
    connect: str = "on-open"
    linger: float = 2.0
    owner: str | None = None
    group: str | None = None
    mode: int = 0o660
    retry_max: float = 15.0
    # Seconds the server may leave vcom without an answer (keepalive probes, data unacknowledged, a closed
    # receive window) before the connection counts as dead and is made again; 0: the kernel's own limits.
    peer_timeout: float = 15.0
    split_of: str | None = None  # share the connection of this other port (same remote port, two programs)
    # Pinned line settings: the pty forces CS8 and no parity, so these can only come from here; a pinned
    # value always wins over what the program sets.  None: follow the program.
    data_bits: int | None = None
    parity: str | None = None
    stop_bits: str | None = None
    pin_baud: bool = False
    hangup_on_dcd: bool = True  # hang the program up when the remote drops DCD and CLOCAL is off
    # Take the program's data no faster than the line rate in force (plus a UART's 4 KiB), so that writes,
    # write timeouts and tcdrain take as long as on a local UART at that speed.  Off: the network and the
    # server pace the data.
    emulate_baud: bool = False
    # TLS (rfc2217+tls:// and tcp+tls:// targets); see vcom.tls.  Written to the file only when set.
    tls_ca: str | None = None  # None: the system's trust store
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None  # None: the target's host
    tls_insecure: bool = False

    def __post_init__(self) -> None:
        validate(self)
        _validate_port_tls(self)

    @property
    def parsed_target(self) -> Target:
        target = parse_target(self.target)
        if not target.tls:
            return target
        from .tls import ClientTls

        return replace(target, tls_options=ClientTls(self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name,
                                                     self.tls_insecure))

    def pins(self) -> dict[str, object]:
        """The pinned values, as LineSettings fields."""
        pins: dict[str, object] = {}
        if self.pin_baud:
            pins["baud"] = self.baud
        if self.data_bits is not None:
            pins["data_bits"] = self.data_bits
        if self.parity is not None:
            pins["parity"] = Parity(self.parity)
        if self.stop_bits is not None:
            pins["stop_bits"] = StopBits(self.stop_bits)
        return pins

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)
                                  if f.name not in PORT_TLS_KEYS or getattr(self, f.name)}
        out["mode"] = f"{self.mode:04o}"
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortConfig:
        unknown = _unknown(data, cls)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}")
        if "device" not in data or "target" not in data:
            raise ConfigError("a port needs both 'device' and 'target'")
        values = dict(data)
        if isinstance(values.get("mode"), str):
            values["mode"] = parse_mode(str(values["mode"]))
        return cls(**values)


def parse_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError("is not an octal number such as 0660", "mode", text) from None
    if not 0 <= mode <= 0o777:
        raise ConfigError("is out of range 0000-0777", "mode", _Octal(mode))
    return mode


class _Octal(int):
    """A mode shown as people write it (01777, not 1023)."""

    def __str__(self) -> str:
        return f"{'-' if self < 0 else ''}0{abs(self):o}"


def validate(port: PortConfig) -> None:
    if not isinstance(port.device, str) or not port.device.startswith("/"):
        raise ConfigError("must be an absolute path", "device", port.device)
    if not isinstance(port.target, str):
        raise ConfigError("must be a string such as \"host:port\"", "target", port.target)
    try:
        parse_target(port.target)
    except TargetError as exc:
        raise ConfigError(str(exc)) from None
    _check_number("baud", port.baud, 1, 20_000_000, whole=True, what="a whole number between 1 and 20000000")
    if port.connect not in CONNECT_POLICIES:
        raise ConfigError(f"must be one of {', '.join(CONNECT_POLICIES)}", "connect", port.connect)
    for name in ("linger", "retry_max", "peer_timeout"):
        _check_number(name, getattr(port, name), 0, 86400, whole=False,
                      what="a number of seconds between 0 and 86400")
    for name in ("owner", "group"):
        value = getattr(port, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError("must be a user or group name", name, value)
    if port.split_of is not None and (not isinstance(port.split_of, str) or not port.split_of.startswith("/")):
        raise ConfigError("must be the absolute path of another port", "split_of", port.split_of)
    if port.split_of == port.device:
        raise ConfigError(f"{port.device} cannot be split from itself")
    if port.data_bits is not None and (port.data_bits not in (5, 6, 7, 8) or isinstance(port.data_bits, bool)):
        raise ConfigError("must be 5, 6, 7 or 8", "data_bits", port.data_bits)
    if port.parity is not None and port.parity not in {p.value for p in Parity}:
        raise ConfigError(f"must be one of {', '.join(p.value for p in Parity)}", "parity", port.parity)
    if port.stop_bits is not None and port.stop_bits not in {s.value for s in StopBits}:
        raise ConfigError(f"must be one of {', '.join(s.value for s in StopBits)}", "stop_bits", port.stop_bits)
    for name in ("pin_baud", "hangup_on_dcd", "emulate_baud"):
        if not isinstance(getattr(port, name), bool):
            raise ConfigError("must be true or false", name, getattr(port, name))
    if not isinstance(port.mode, int) or isinstance(port.mode, bool):
        raise ConfigError("must be an octal number such as 0660", "mode", port.mode)
    if not 0 <= port.mode <= 0o777:
        raise ConfigError("is out of range 0000-0777", "mode", _Octal(port.mode))


# -- shares --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShareConfig:
    device: str  # "/dev/ttyUSB0" or "sim:echo"
    listen_host: str = "127.0.0.1"  # loopback unless the user names another address
    listen_port: int = 0  # 0: the kernel picks one; the bound port is Share.port
    protocol: str = "rfc2217"  # "rfc2217" | "tcp" | "udp"
    slow_client: str = "drop"  # "drop" the slow client's oldest queued data, or "disconnect" it
    client_buffer: int = 65536  # bytes queued per client before the slow-client policy acts
    control: str = "all"  # who may change settings and signals: "all" or "first"
    max_clients: int = 32  # one more is closed at once and counted
    # TLS (vcom.tls) and who may connect (vcom.access).  Written to the file only when set.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # mutual TLS: every client needs a certificate this CA signed
    allow: tuple[str, ...] = ()  # addresses and networks that may connect; empty: everyone
    max_clients_per_address: int = 8  # so that one peer cannot take every place
    idle_timeout: float = 0.0  # close a client with no traffic either way for this long; 0: never

    def __post_init__(self) -> None:
        validate_share(self)

    @property
    def listen(self) -> str:
        return join_host_port(self.listen_host, self.listen_port)

    @property
    def server_tls(self) -> ServerTls | None:
        if not self.tls_cert or not self.tls_key:
            return None
        from .tls import ServerTls

        return ServerTls(self.tls_cert, self.tls_key, self.tls_client_ca)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)
                                  if f.name not in (*SHARE_TLS_KEYS, "allow") or getattr(self, f.name)}
        if self.allow:
            out["allow"] = list(self.allow)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShareConfig:
        unknown = _unknown(data, cls)
        if unknown:
            raise ShareError(f"unknown share setting(s) {unknown}")
        if "device" not in data:
            raise ShareError("a share needs a 'device'")
        values = dict(data)
        if isinstance(values.get("allow"), list):
            values["allow"] = tuple(values["allow"])
        return cls(**values)


def validate_share(config: ShareConfig) -> None:
    device = config.device
    if not isinstance(device, str) or not (device.startswith("/") or device.lower().startswith("sim:")):
        raise ShareError("must be an absolute path such as /dev/ttyUSB0 or sim:echo", "device", device)
    if not isinstance(config.listen_host, str) or not _valid_host(config.listen_host):
        raise ShareError("is not an IP address or host name", "listen_host", config.listen_host,
                         label="listen address")
    _check_number("listen_port", config.listen_port, 0, 65535, whole=True,
                  what="a port number between 0 and 65535", error=ShareError)
    for name, choices in (
        ("protocol", PROTOCOLS),
        ("slow_client", SLOW_CLIENT_POLICIES),
        ("control", CONTROL_POLICIES),
    ):
        value = getattr(config, name)
        if value not in choices:
            raise ShareError(f"must be one of {', '.join(choices)}", name, value)
    _check_number("client_buffer", config.client_buffer, MIN_CLIENT_BUFFER, MAX_CLIENT_BUFFER, whole=True,
                  what=f"a number of bytes between {MIN_CLIENT_BUFFER} and {MAX_CLIENT_BUFFER}", error=ShareError)
    _check_number("max_clients", config.max_clients, 1, MAX_CLIENTS, whole=True,
                  what=f"a whole number between 1 and {MAX_CLIENTS}", error=ShareError)
    _validate_share_access(config)


def _validate_share_access(config: ShareConfig) -> None:
    try:
        for name in SHARE_TLS_KEYS:
            _check_path(name, getattr(config, name))
        _check_pair(config.tls_cert, config.tls_key)
    except ConfigError as exc:
        raise ShareError(exc.reason, exc.key, exc.value) from None
    if config.tls_client_ca and not config.tls_cert:
        raise ShareError("needs {tls_cert} and {tls_key}: clients are asked for a certificate during a TLS handshake",
                         "tls_client_ca", config.tls_client_ca)
    if config.tls_cert and config.protocol == "udp":
        raise ShareError("is for TCP shares: UDP carries no TLS in vcom (DTLS is not supported)",
                         "tls_cert", config.tls_cert)
    if not isinstance(config.allow, tuple | list):
        raise ShareError("must be a list of addresses or networks such as [\"192.0.2.0/24\"]", "allow", config.allow)
    from .access import AccessError, parse_network

    for entry in config.allow:
        try:
            parse_network(entry)
        except AccessError as exc:
            raise ShareError(str(exc), "allow", entry) from None
    _check_number("max_clients_per_address", config.max_clients_per_address, 1, MAX_CLIENTS, whole=True,
                  what=f"a whole number between 1 and {MAX_CLIENTS}", error=ShareError)
    _check_number("idle_timeout", config.idle_timeout, 0, 86400, whole=False,
                  what="a number of seconds between 0 and 86400", error=ShareError)


# -- helpers -------------------------------------------------------------------------------------


def _unknown(data: dict[str, Any], cls: type) -> str:
    return ", ".join(sorted(set(data) - {f.name for f in fields(cls)}))


def _check_number(name: str, value: object, low: float, high: float, *, whole: bool, what: str,
                  error: type[ConfigError] = ConfigError) -> None:
    kinds = (int,) if whole else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
        raise error(f"must be {what}", name, value)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.match(host))
    return True


def tls_files(cfg: PortConfig | ShareConfig) -> list[tuple[str, str]]:
    """The TLS files a port or share names: (key, path), the keys that are set."""
    keys = PORT_TLS_FILES if isinstance(cfg, PortConfig) else SHARE_TLS_KEYS
    return [(key, path) for key in keys if (path := getattr(cfg, key))]


def _validate_port_tls(port: PortConfig) -> None:
    for name in PORT_TLS_FILES:
        _check_path(name, getattr(port, name))
    if not isinstance(port.tls_insecure, bool):
        raise ConfigError("must be true or false", "tls_insecure", port.tls_insecure)
    if port.tls_server_name is not None and (not isinstance(port.tls_server_name, str)
                                             or not _valid_host(port.tls_server_name)):
        raise ConfigError("is not a host name or address", "tls_server_name", port.tls_server_name)
    given = [name for name in PORT_TLS_KEYS if getattr(port, name)]
    if not given:
        return
    if not parse_target(port.target).tls:
        raise ConfigError(f"needs a TLS target (rfc2217+tls://host:port or tcp+tls://host:port), not {port.target}",
                          given[0], getattr(port, given[0]))
    if port.split_of:
        raise ConfigError(f"is not for a split port: it uses the connection of {port.split_of}, TLS settings included",
                          given[0], getattr(port, given[0]))
    _check_pair(port.tls_cert, port.tls_key)
    if port.tls_insecure and port.tls_ca:
        raise ConfigError("turns verification off, so {tls_ca} would not be used: give one or the other",
                          "tls_insecure")


def _check_pair(cert: str | None, key: str | None) -> None:
    if cert and not key:
        raise ConfigError("needs {tls_key} too (the certificate's private key)", "tls_cert", cert)
    if key and not cert:
        raise ConfigError("needs {tls_cert} too (the certificate of this key)", "tls_key", key)


def _check_path(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.startswith("/")):
        raise ConfigError("must be an absolute file path", name, value)
