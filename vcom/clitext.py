"""What the ``vcom`` command prints: status and share summaries, monitor events, and usage errors
reworded from the argument parser's into vcom's own."""

from __future__ import annotations

import re
import time
from typing import Any


def format_status(port: dict[str, Any]) -> str:
    settings = port.get("settings") or {}
    remote = port.get("remote_settings") or {}
    program = describe(settings)
    in_force = describe(remote) if any(v is not None for v in remote.values()) else "not acknowledged"
    lines = [
        f"{port['device']}  {port.get('state')}  {'open' if port.get('open') else 'closed'}  -> {port.get('target')}",
        f"  program: {program}   remote: {in_force}"
        + (f"   server: {port['signature']}" if port.get("signature") else ""),
        f"  bytes to remote {port.get('bytes_to_remote', 0)}, from remote {port.get('bytes_from_remote', 0)}, "
        f"dropped {port.get('dropped_bytes', 0)}, connects {port.get('connects', 0)}, "
        f"reconnects after a loss {port.get('reconnects', 0)}",
    ]
    signals = port.get("signals") or {}
    if signals:
        names = ("dtr", "rts", "cts", "dsr", "dcd", "ri")
        lamps = " ".join(f"{name.upper()}{lamp(signals.get(name))}" for name in names)
        errors = port.get("line_errors") or {}
        counted = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
        lines.append(f"  lines: {lamps}" + (f"   line errors: {counted}" if counted else ""))
    if port.get("open"):
        how = ", ".join(port.get("interposed") or []) or "none"
        exact = "exact" if port.get("settings_exact") else "data bits and parity as the pty forces them"
        lines.append(f"  interposer: {how}   settings: {exact}")
    if port.get("lost_bytes"):
        lines.append(f"  lost: {port['lost_bytes']} byte(s) written before a close could not be sent")
    if port.get("pinned"):
        lines.append(f"  pinned: {', '.join(port['pinned'])} -> sent {describe(port.get('effective_settings') or {})}")
    if port.get("com_port") is False:
        lines.append("  server refused RFC 2217: plain data only")
    if port.get("tls"):
        lines += tls_lines(port["tls"])
    if port.get("last_error"):
        lines.append(f"  last error: {port['last_error']}")
    return "\n".join(lines)


def format_share(share: dict[str, Any]) -> str:
    settings = share.get("settings") or {}
    lines = [
        f"share {share['device']}  {share.get('device_state')}  {share.get('protocol')} on {share.get('listen')}"
        + share_access(share),
        f"  device: {describe(settings) if settings else 'not open'}   clients: {len(share.get('clients', []))}",
    ]
    for client in share.get("clients", []):
        tls = client.get("tls") or {}
        who = (tls.get("peer") or {}).get("subject") if tls else None
        lines.append(f"  client {client.get('peer')}: in {client.get('bytes_in', 0)}, "
                     f"out {client.get('bytes_out', 0)}, dropped {client.get('dropped', 0)}"
                     + (f", {tls.get('version')}" if tls else "") + (f", certificate {who}" if who else ""))
    if share.get("device_error"):
        lines.append(f"  device error: {share['device_error']}")
    tls = share.get("tls")
    if tls:
        cert = tls.get("certificate") or {}
        lines.append(f"  tls: certificate {cert.get('subject') or tls.get('cert')}, valid until {cert.get('not_after')}"
                     + (f"; clients need a certificate from {tls['client_ca']}" if tls.get("client_ca") else ""))
        for key in ("warning", "error"):
            if tls.get(key):
                lines.append(f"  tls {key}: {tls[key]}")
    if share.get("denied_clients") or share.get("tls_failures"):
        lines.append(f"  refused: {share.get('denied_clients', 0)} not in --allow, "
                     f"{share.get('tls_failures', 0)} failed TLS handshake(s); last: {share.get('last_refusal')}")
    for warning in share.get("warnings") or []:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


def share_access(share: dict[str, Any]) -> str:
    """What a share asks of its clients, as in ``share X  rfc2217 on H:P over TLS  allow 192.0.2.0/24``."""
    text = ""
    if share.get("tls") or share.get("tls_cert"):
        mutual = (share.get("tls") or {}).get("client_ca") or share.get("tls_client_ca")
        text += " over TLS" + (" (client certificates)" if mutual else "")
    if share.get("allow"):
        text += "  allow " + ",".join(share["allow"])
    return text


def tls_lines(tls: dict[str, Any]) -> list[str]:
    """A port's TLS: the session in force, who the server is, and whether that was checked."""
    peer = tls.get("peer") or {}
    if tls.get("insecure"):
        trust = "NOT VERIFIED (--tls-insecure)"
    else:
        trust = f"verified as {tls.get('server_name')} against {tls.get('ca')}"
    if tls.get("version"):
        lines = [f"  tls: {tls['version']} {tls.get('cipher')}, server {peer.get('subject') or '?'}, "
                 f"valid until {peer.get('not_after')}; {trust}"]
    else:
        lines = [f"  tls: no handshake yet; {trust}"]
    for key in ("warning", "error"):
        if tls.get(key):
            lines.append(f"  tls {key}: {tls[key]}")
    return lines


def lamp(value: object) -> str:
    return "?" if value is None else ("+" if value else "-")


def describe(s: dict[str, Any]) -> str:
    def get(key: str) -> str:
        value = s.get(key)
        return "?" if value is None else str(value)

    parity = get("parity")
    frame = f"{get('data_bits')}{parity[0].upper() if parity != '?' else '?'}{get('stop_bits')}"
    flow = ""
    if s.get("flow_out") not in (None, "none") or s.get("flow_in") not in (None, "none"):
        flow = f" flow out:{get('flow_out')} in:{get('flow_in')}"
    return f"{get('baud')} {frame}{flow}"


def format_event(event: dict[str, Any]) -> list[str]:
    """Human lines for one monitor event: data as 16-byte hex and ASCII rows, the rest as a word and values."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["t"])) + f".{int(event['t'] % 1 * 1e6):06d}"
    kind = event.get("kind")
    if kind == "data":
        data = bytes.fromhex(event["data"])
        arrow = ">" if event.get("dir") == "out" else "<"
        note = "  (dropped: port closed)" if event.get("dropped") else ""
        rows = []
        for start in range(0, len(data), 16):
            row = data[start:start + 16]
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
            rows.append(f"{stamp}  {arrow} {row.hex(' '):<47}  {text}{note if start == 0 else ''}")
        return rows
    if kind == "settings":
        return [f"{stamp}  * settings {event.get('text')}"]
    if kind == "signals":
        lamps = " ".join(f"{k}{lamp(v)}" for k, v in event.items() if k not in ("t", "kind"))
        return [f"{stamp}  * signals {lamps}"]
    if kind == "start":
        status = event.get("status", {})
        return [f"{stamp}  * monitoring {status.get('device')} -> {status.get('target')} ({status.get('state')})"]
    details = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("t", "kind"))
    return [f"{stamp}  * {kind}" + (f" {details}" if details else "")]


def usage_message(exc: Exception) -> str:
    """A usage error of the argument parser, in vcom's words."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "vcom"
    help_hint = f"'{command} --help' lists {'the commands' if command == 'vcom' else 'its options'}"
    text = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    if "NoSuchOption" in kinds:
        name = getattr(exc, "option_name", "?")
        similar = sorted(getattr(exc, "possibilities", None) or [])
        maybe = f"; did you mean {' or '.join(similar)}?" if similar else ""
        return f"unknown option {name}{maybe} ({help_hint})"
    if "MissingParameter" in kinds:
        param = getattr(exc, "param", None)
        opts = getattr(param, "opts", None) or []
        name = opts[0] if opts and opts[0].startswith("-") else (getattr(param, "metavar", None) or
                                                                 str(getattr(param, "name", "?")).upper())
        return f"missing {name} ({help_hint})"
    if "BadOptionUsage" in kinds and "requires an argument" in text:
        return f"{getattr(exc, 'option_name', '?')} needs a value"
    match = re.search(r"unexpected extra argument(?:s|\(s\))? \((.*)\)", text)
    if match:
        return f"unexpected argument(s) {match.group(1)} ({help_hint})"
    match = re.search(r"No such command '(.*)'", text)
    if match:
        return f"unknown command {match.group(1)!r} ({help_hint})"
    if "BadParameter" in kinds:
        param = getattr(exc, "param", None)
        opts = getattr(param, "opts", None) or [str(getattr(param, "name", "?"))]
        return f"{opts[0]}: not a valid value ({help_hint})"
    return f"{text[:1].lower()}{text[1:]} ({help_hint})"
