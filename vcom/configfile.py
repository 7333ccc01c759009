"""The config file: the user's, read by vcom and edited in place, never regenerated.

``[[port]]`` tables (the names of the ``vcom add`` options) and ``[[share]]`` tables (those of
``vcom share``).  Rules:

* A file that is not valid TOML (or not UTF-8) is never written: :class:`ConfigSyntaxError` names the
  file, line and column, and ``vcom run``, ``vcom add`` and ``vcom list`` stop with it.
* An entry vcom cannot use is reported (:class:`Problem`, with its line and reason), skipped, and left
  in the file as it is.
* Adding appends new tables at the end of the file; removing deletes one table with a style-preserving
  TOML library (tomlkit): comments, order, formatting and every other entry stay as they were.

Appending costs the same at the 1,000th port as at the first: the file is parsed again only when it
changed since vcom last read or wrote it (its size, modification time and inode tell).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, PortConfig, ShareConfig, ShareError

TABLES = ("port", "share")
HEADER = ("# vcom virtual ports and shares. Edit while the manager is stopped, or use the vcom command.\n"
          "# Each [[port]] takes the names of the `vcom add` options, each [[share]] those of `vcom share`.\n")

_TOMLLIB_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_HEADER_LINE = re.compile(r"^[ \t]*\[\[[ \t]*(port|share)[ \t]*\]\]", re.MULTILINE)
_ANY_HEADER = re.compile(r"^[ \t]*\[")


class ConfigSyntaxError(ConfigError):
    """The file cannot be read as TOML: nothing in it is used, and vcom does not write it."""


@dataclass(frozen=True, slots=True)
class Problem:
    """An entry that vcom cannot use: reported and left alone."""

    path: Path
    table: str  # "port" or "share"
    index: int  # 1-based among the tables of its kind
    line: int | None
    device: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        what = f"{self.table} #{self.index}" + (f" ({self.device})" if self.device else "")
        return f"{where}: {what}: {self.reason}"

    def to_json(self) -> dict[str, object]:
        return {"file": str(self.path), "line": self.line, "table": self.table, "index": self.index,
                "device": self.device, "reason": self.reason, "message": str(self)}


@dataclass(slots=True)
class Loaded:
    ports: list[PortConfig] = field(default_factory=list)
    shares: list[ShareConfig] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Every device named in the file, usable or not: a new entry for one of them would be a second one.
    devices: dict[str, set[str]] = field(default_factory=lambda: {"port": set(), "share": set()})
    # Every port and share is a [[table]] at top level, so new ones can be appended as text.
    appendable: bool = True

    @property
    def errors(self) -> list[str]:
        return [str(p) for p in self.problems]


def load(path: Path) -> Loaded:
    """The usable ports and shares and the problems of the others; ConfigSyntaxError if unreadable."""
    text = read_text(path)
    return parse(path, text) if text is not None else Loaded()


def read_text(path: Path) -> str | None:
    """The file's text; None if there is none.  ConfigSyntaxError (naming the file) if it is not UTF-8."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigSyntaxError(f"{path} is a directory, not a config file") from None
    except PermissionError:
        raise ConfigSyntaxError(f"{path}: permission denied") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigSyntaxError(f"{path}:{line}:{column}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                                "vcom reads and writes its config as UTF-8") from None


def parse(path: Path, text: str) -> Loaded:
    data = parse_toml(path, text)
    loaded = Loaded()
    lines = header_lines(text, data)
    loaded.appendable = all(
        table not in data or (isinstance(data[table], list) and len(lines[table]) == len(data[table]))
        for table in TABLES)
    for table, build, into in (("port", PortConfig.from_json, loaded.ports),
                               ("share", ShareConfig.from_json, loaded.shares)):
        entries = data.get(table, [])
        if not isinstance(entries, list):
            loaded.problems.append(Problem(path, table, 1, None, None,
                                           f"'{table}' must be written as [[{table}]] tables"))
            continue
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries, 1):
            line = lines[table][index - 1] if lines[table] else None
            device = entry.get("device") if isinstance(entry, dict) else None
            device = device if isinstance(device, str) else None
            key = _device_key(table, device) if device else None
            if key:
                loaded.devices[table].add(key)
            try:
                if not isinstance(entry, dict):
                    raise ConfigError("is not a table")
                built = build(entry)
                if key in seen:
                    raise ConfigError(f"{device} is already defined by {table} #{seen[key]}")
                into.append(built)  # type: ignore[arg-type]
                if key:
                    seen[key] = index
            except (ConfigError, ShareError) as exc:
                loaded.problems.append(Problem(path, table, index, line, device, str(exc)))
    return loaded


def parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOMLLIB_WHERE.search(message)
        if match:
            where = f"{path}:{match.group(1)}:{match.group(2)}"
            message = message[: match.start()]
        else:
            where = f"{path}:{text.count(chr(10)) + 1}:1"  # "at end of document"
            message = message.replace(" (at end of document)", "") + " at the end of the file"
        message = message[:1].lower() + message[1:]
        raise ConfigSyntaxError(f"{where}: not valid TOML: {message}") from None


def header_lines(text: str, data: dict[str, Any]) -> dict[str, list[int]]:
    """The line of each [[port]] / [[share]] header, when a plain scan finds exactly one per entry
    (a header-like line inside a multi-line string would make it guess wrong: then no lines)."""
    found: dict[str, list[int]] = {"port": [], "share": []}
    for match in _HEADER_LINE.finditer(text):
        found[match.group(1)].append(text.count("\n", 0, match.start()) + 1)
    for table in TABLES:
        entries = data.get(table)
        if not isinstance(entries, list) or len(entries) != len(found[table]):
            found[table] = []
    return found


def _device_key(table: str, device: str) -> str:
    if table == "share" and device.lower().startswith("sim:"):
        return device.lower()
    return os.path.abspath(device)


# -- editing ---------------------------------------------------------------------------------------


class ConfigFile:
    """The manager's handle on the file: reads it, appends tables, removes one, and refuses to touch a
    file that is no longer valid TOML."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) when last known valid
        self._devices: dict[str, set[str]] = {"port": set(), "share": set()}
        self._appendable = True  # every existing port/share is a [[table]] at top level
        self.problems: list[Problem] = []  # the unusable entries as of the last read

    def load(self) -> Loaded:
        text = read_text(self.path)
        loaded = parse(self.path, text) if text is not None else Loaded()
        self._known(loaded)
        return loaded

    def _known(self, loaded: Loaded) -> None:
        self._devices = {table: set(devices) for table, devices in loaded.devices.items()}
        self._appendable = loaded.appendable
        self.problems = list(loaded.problems)
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _refresh(self) -> None:
        """Re-read the file if someone else changed it; ConfigSyntaxError if it is now broken."""
        if self._current_stamp() != self._stamp:
            self.load()

    def check_new(self, table: str, devices: list[str]) -> None:
        """ConfigError unless each device can get a new [[table]] entry (none names it yet)."""
        self._refresh()
        for device in devices:
            if _device_key(table, device) in self._devices[table]:
                raise ConfigError(f"{self.path} already has a [[{table}]] entry for {device} that the manager "
                                  "does not run: one vcom cannot use, or one added by hand while the manager "
                                  "ran (vcom list shows which); fix or delete it first")

    def append(self, table: str, entries: list[dict[str, object]]) -> None:
        """Add ``entries`` as [[table]] tables at the end of the file, in one write."""
        if not entries:
            return
        self._refresh()
        if not self._appendable:
            self._rewrite(lambda doc: _append_tables(doc, table, entries))
        else:
            text = render_tables(table, entries)
            self._append_text(text)
        for entry in entries:
            self._devices[table].add(_device_key(table, str(entry["device"])))

    def remove(self, table: str, device: str) -> bool:
        """Delete the first [[table]] whose device is ``device``; False if there is none."""
        self._refresh()
        key = _device_key(table, device)
        removed = self._remove_lines(table, key)
        if removed is None:  # the file's layout is not one the line cut can be sure of
            removed = self._rewrite(lambda doc: _remove_table(doc, table, key))
        if removed:
            self._devices[table].discard(key)
        return removed

    def _remove_lines(self, table: str, key: str) -> bool | None:
        """Cut the table's lines (and the comment block right above its header) out of the text.

        Parsing with tomlkit costs half a second at 1,000 ports; this costs two tomllib parses.  The
        cut is kept only if the result reads back as exactly the old data less that one entry;
        otherwise None, and the caller edits with tomlkit.
        """
        text = read_text(self.path)
        if text is None:
            return False
        data = parse_toml(self.path, text)
        entries = data.get(table)
        if not isinstance(entries, list):
            return False
        index = next((i for i, e in enumerate(entries) if isinstance(e, dict) and isinstance(e.get("device"), str)
                      and _device_key(table, e["device"]) == key), None)
        if index is None:
            return False
        headers = header_lines(text, data)[table]
        if not headers:
            return None
        lines = text.splitlines(keepends=True)
        start = headers[index] - 1
        end = next((n for n in range(start + 1, len(lines)) if _ANY_HEADER.match(lines[n])), len(lines))
        while end > start + 1 and lines[end - 1].lstrip().startswith("#"):
            end -= 1  # a comment block right above the next header belongs to that table
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        new_text = "".join(lines[:start] + lines[end:])
        expected = dict(data)
        expected[table] = entries[:index] + entries[index + 1:]
        if not expected[table]:
            del expected[table]
        try:
            if tomllib.loads(new_text) != expected:
                return None
        except tomllib.TOMLDecodeError:
            return None
        loaded = parse(self.path, new_text)
        _replace(self.path, new_text)
        self._known(loaded)
        return True

    def _append_text(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            text = text if text.endswith("\n") else text + "\n"
            if size == 0:
                text = HEADER + "\n" + text
            else:
                text = ("" if _ends_with_newline(fd, size) else "\n") + "\n" + text
            data = text.encode("utf-8")
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write to {self.path}")
            except OSError:
                os.ftruncate(fd, size)  # a full disk must not leave half a table behind
                raise
        finally:
            os.close(fd)
        self._stamp = self._current_stamp()

    def _rewrite(self, change: Any) -> Any:
        import tomlkit

        text = read_text(self.path)
        if text is None:
            doc = tomlkit.document()
            doc.add(tomlkit.comment(HEADER.splitlines()[0][2:]))
            doc.add(tomlkit.comment(HEADER.splitlines()[1][2:]))
            doc.add(tomlkit.nl())
        else:
            parse_toml(self.path, text)  # the syntax error in vcom's words, before tomlkit's
            doc = tomlkit.parse(text)
        result = change(doc)
        if result is False:
            return False
        new_text = tomlkit.dumps(doc)
        loaded = parse(self.path, new_text)  # what is written must read back: never write a broken file
        _replace(self.path, new_text)
        self._known(loaded)
        return True if result is None else result


def render_tables(table: str, entries: list[dict[str, object]]) -> str:
    """``entries`` as [[table]] tables, None values left out (they mean "the default")."""
    import tomlkit

    parts = []
    for entry in entries:
        values = tomlkit.table()
        for key, value in entry.items():
            if value is not None:
                values.add(key, value)
        array = tomlkit.aot()
        array.append(values)
        parts.append(tomlkit.dumps({table: array}))
    return "\n".join(parts)


def _append_tables(doc: Any, table: str, entries: list[dict[str, object]]) -> None:
    import tomlkit
    from tomlkit.items import AoT

    if table not in doc:
        doc.add(table, tomlkit.aot())
    inline = not isinstance(doc[table], AoT)  # `port = [{...}]`: keep the user's form
    for entry in entries:
        values = tomlkit.inline_table() if inline else tomlkit.table()
        for key, value in entry.items():
            if value is not None:
                values.add(key, value)
        doc[table].append(values)


def _remove_table(doc: Any, table: str, key: str) -> bool:
    entries = doc.get(table)
    if entries is None or not isinstance(entries, list):
        return False
    for index, entry in enumerate(entries):
        device = entry.get("device") if hasattr(entry, "get") else None
        if isinstance(device, str) and _device_key(table, str(device)) == key:
            del entries[index]
            if not len(entries):
                del doc[table]
            return True
    return False


def _ends_with_newline(fd: int, size: int) -> bool:
    return os.pread(fd, 1, size - 1) == b"\n"


def _replace(path: Path, text: str) -> None:
    """Write the whole file anew, atomically, keeping its owner and mode (and the symlink, if the user
    keeps the file elsewhere and links to it)."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".vcom.", suffix=".toml", dir=path.parent)
    try:
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            os.fchmod(fd, st.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
