"""Port and share definitions and the human-editable TOML file that keeps them.

The file holds ``[[port]]`` tables, one per virtual port, with the names of
the ``vcom add`` options, and ``[[share]]`` tables, one per shared local
device, with the names of :class:`vcom.share.ShareConfig`.  It is read with :mod:`tomllib` and written
by hand (the format is flat: strings, numbers, booleans), atomically, so a
crash never leaves half a file.  A broken entry is reported and skipped: one
bad port never keeps the others from starting.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .settings import Parity, StopBits
from .share import ShareConfig, ShareError
from .target import Target, parse_target

log = logging.getLogger(__name__)

CONNECT_POLICIES = ("on-open", "always")


class ConfigError(ValueError):
    """A port definition that cannot be used, with a one-line reason."""


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
    split_of: str | None = None  # share the connection of this other port (same remote port, two programs)
    # Pinned line settings: the pty forces CS8 and no parity, so these can only come from here; a pinned
    # value always wins over what the program sets.  None: follow the program.
    data_bits: int | None = None
    parity: str | None = None
    stop_bits: str | None = None
    pin_baud: bool = False
    hangup_on_dcd: bool = True  # hang the program up when the remote drops DCD and CLOCAL is off

    def __post_init__(self) -> None:
        validate(self)

    @property
    def parsed_target(self) -> Target:
        return parse_target(self.target)

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
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["mode"] = f"{self.mode:04o}"
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PortConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
        values = dict(data)
        if "device" not in values or "target" not in values:
            raise ConfigError("a port needs both 'device' and 'target'")
        if isinstance(values.get("mode"), str):
            values["mode"] = parse_mode(str(values["mode"]))
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


def parse_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError(f"mode {text!r} is not an octal number such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"mode {_octal(mode)} is out of range 0000-0777")
    return mode


def _octal(mode: int) -> str:
    """A mode as people write it (01777, not 1023)."""
    return f"{'-' if mode < 0 else ''}0{abs(mode):o}"


def validate(port: PortConfig) -> None:
    if not isinstance(port.device, str) or not port.device.startswith("/"):
        raise ConfigError(f"device {port.device!r} must be an absolute path")
    try:
        parse_target(port.target)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(port.baud, int) or isinstance(port.baud, bool) or not 1 <= port.baud <= 20_000_000:
        raise ConfigError(f"baud {port.baud!r} must be a whole number between 1 and 20000000")
    if port.connect not in CONNECT_POLICIES:
        raise ConfigError(f"connect policy {port.connect!r} must be one of {', '.join(CONNECT_POLICIES)}")
    for name in ("linger", "retry_max"):
        value = getattr(port, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or value > 86400:
            raise ConfigError(f"{name} {value!r} must be a number of seconds between 0 and 86400")
    if port.split_of is not None and (not isinstance(port.split_of, str) or not port.split_of.startswith("/")):
        raise ConfigError(f"split_of {port.split_of!r} must be the absolute path of another port")
    if port.split_of == port.device:
        raise ConfigError(f"{port.device} cannot be split from itself")
    if port.data_bits is not None and port.data_bits not in (5, 6, 7, 8):
        raise ConfigError(f"data bits {port.data_bits!r} must be 5, 6, 7 or 8")
    if port.parity is not None and port.parity not in {p.value for p in Parity}:
        raise ConfigError(f"parity {port.parity!r} must be one of {', '.join(p.value for p in Parity)}")
    if port.stop_bits is not None and port.stop_bits not in {s.value for s in StopBits}:
        raise ConfigError(f"stop bits {port.stop_bits!r} must be one of {', '.join(s.value for s in StopBits)}")
    for name in ("pin_baud", "hangup_on_dcd"):
        if not isinstance(getattr(port, name), bool):
            raise ConfigError(f"{name} must be true or false")
    if not isinstance(port.mode, int) or isinstance(port.mode, bool):
        raise ConfigError(f"mode {port.mode!r} must be an octal number such as 0660")
    if not 0 <= port.mode <= 0o777:
        raise ConfigError(f"mode {_octal(port.mode)} is out of range 0000-0777")


@dataclass(slots=True)
class Loaded:
    ports: list[PortConfig] = field(default_factory=list)
    shares: list[ShareConfig] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per entry that was skipped


def load(path: Path) -> Loaded:
    """Read the config file: the usable ports and shares, and one error line per unusable entry."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Loaded()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return Loaded(errors=[f"{path}: not valid TOML: {exc}"])
    loaded = Loaded()
    for table, build, into in (("port", PortConfig.from_json, loaded.ports),
                               ("share", ShareConfig.from_json, loaded.shares)):
        entries = data.get(table, [])
        if not isinstance(entries, list):
            loaded.errors.append(f"{path}: '{table}' must be an array of tables ([[{table}]])")
            continue
        for index, entry in enumerate(entries, 1):
            try:
                if not isinstance(entry, dict):
                    raise ConfigError("not a table")
                into.append(build(entry))  # type: ignore[arg-type]
            except (ConfigError, ShareError) as exc:
                loaded.errors.append(f"{path}: {table} #{index}: {exc}")
    return loaded


def save(path: Path, ports: list[PortConfig], shares: list[ShareConfig] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".vcom.", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(render(ports, shares or []))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def render(ports: list[PortConfig], shares: list[ShareConfig] | None = None) -> str:
    lines = [
        "# vcom virtual ports and shares. Edit while the manager is stopped, or use the vcom command.",
        "# Each [[port]] takes the names of the `vcom add` options, each [[share]] those of `vcom share`.",
    ]
    tables: list[tuple[str, dict[str, object]]] = [("port", p.to_json()) for p in ports]
    tables += [("share", s.to_json()) for s in shares or []]
    for table, values in tables:
        lines.append("")
        lines.append(f"[[{table}]]")
        for key, value in values.items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # JSON string escapes (\", \\, \n, \uXXXX) are all valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)
