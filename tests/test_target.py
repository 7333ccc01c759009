import pytest

from vcom.target import Target, TargetError, Transport, parse_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.10:4001", Target(Transport.RFC2217, "192.0.2.10", 4001)),
        ("rfc2217://host.example:23", Target(Transport.RFC2217, "host.example", 23)),
        ("RFC2217://h:1", Target(Transport.RFC2217, "h", 1)),
        ("tcp://10.0.0.1:65535", Target(Transport.TCP, "10.0.0.1", 65535)),
        ("[::1]:4001", Target(Transport.RFC2217, "::1", 4001)),
        ("tcp://[fe80::1]:7000", Target(Transport.TCP, "fe80::1", 7000)),
        ("  localhost:7000 ", Target(Transport.RFC2217, "localhost", 7000)),
    ],
)
def test_valid_targets(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


def test_str_round_trips() -> None:
    for text in ("rfc2217://h:1", "tcp://[::1]:4001", "tcp://127.0.0.1:9"):
        assert str(parse_target(text)) == text
        assert parse_target(str(parse_target(text))) == parse_target(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("nohost", "missing port"),
        ("host:", "not a number"),
        (":4001", "missing host"),
        ("host:99999", "out of range"),
        ("host:0", "out of range"),
        ("host:-1", "not a number"),
        ("ftp://h:1", "unknown scheme"),
        ("::1:4001", "brackets"),
        ("[::1", "unclosed"),
        ("[::1]4001", "missing port"),
        ("[nothex]:1", "not an IPv6"),
        ("a b:1", "not a valid host"),
        ("host_name:1", "not a valid host"),
    ],
)
def test_bad_targets_are_one_line_errors(text: str, reason: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(text)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message
