import tomllib
from pathlib import Path

import pytest

from vcom.config import ConfigError, PortConfig, parse_mode
from vcom.configfile import HEADER, ConfigFile, ConfigSyntaxError, load
from vcom.share import ShareConfig


def save(path: Path, ports: list[PortConfig], shares: list[ShareConfig] | None = None) -> None:
    config = ConfigFile(path)
    config.append("port", [p.to_json() for p in ports])
    config.append("share", [s.to_json() for s in shares or []])


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    ports = [
        PortConfig(device="/dev/ttyV0", target="rfc2217://h:4001"),
        PortConfig(device='/tmp/we"ird\\name', target="tcp://[::1]:7", baud=250000, connect="always",
                   linger=0.5, owner="root", group="dialout", mode=0o600, retry_max=3.0),
    ]
    path = tmp_path / "sub" / "vcom.toml"
    save(path, ports)
    loaded = load(path)
    assert loaded.errors == []
    assert loaded.ports == ports
    text = path.read_text()
    assert 'mode = "0600"' in text  # octal, as a person writes it
    assert tomllib.loads(text)["port"][1]["baud"] == 250000


def test_a_broken_entry_does_not_hide_the_others(tmp_path: Path) -> None:
    path = tmp_path / "vcom.toml"
    path.write_text(
        '[[port]]\ndevice = "/dev/a"\ntarget = "h:1"\n\n'
        '[[port]]\ndevice = "/dev/b"\ntarget = "h:99999"\n\n'
        '[[port]]\ndevice = "/dev/c"\ntarget = "h:2"\nspeed = 5\n\n'
        '[[port]]\ndevice = "/dev/d"\ntarget = "tcp://h:3"\nconnect = "always"\n'
    )
    loaded = load(path)
    errors = loaded.errors
    assert [p.device for p in loaded.ports] == ["/dev/a", "/dev/d"]
    assert len(errors) == 2
    assert "port #2" in errors[0] and "out of range" in errors[0]
    assert "port #3" in errors[1] and "speed" in errors[1]


def test_not_toml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "vcom.toml"
    path.write_text("[[port]\n")
    with pytest.raises(ConfigSyntaxError, match="not valid TOML"):
        load(path)


def test_missing_file_is_empty(tmp_path: Path) -> None:
    loaded = load(tmp_path / "none.toml")
    assert (loaded.ports, loaded.shares, loaded.errors) == ([], [], [])


def test_shares_round_trip_and_bad_shares_are_skipped(tmp_path: Path) -> None:
    shares = [ShareConfig(device="sim:echo", listen_port=4001),
              ShareConfig(device="/dev/ttyUSB0", listen_host="::", listen_port=4002, protocol="udp",
                          slow_client="disconnect", control="first")]
    path = tmp_path / "vcom.toml"
    save(path, [PortConfig(device="/dev/a", target="h:1")], shares)
    loaded = load(path)
    assert loaded.shares == shares and loaded.errors == []
    path.write_text(path.read_text() + '\n[[share]]\ndevice = "sim:echo"\nprotocol = "smoke"\n')
    loaded = load(path)
    assert loaded.shares == shares
    assert len(loaded.errors) == 1 and "share #3" in loaded.errors[0] and "protocol" in loaded.errors[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "relative/path"}, "device 'relative/path' must be an absolute path"),
        ({"target": "nohost"}, "nohost"),
        ({"baud": 0}, "baud 0 must be a whole number between 1 and 20000000"),
        ({"baud": True}, "baud True must be a whole number between 1 and 20000000"),
        ({"connect": "sometimes"}, "connect 'sometimes' must be one of on-open, always"),
        ({"linger": -1}, "linger -1 must be a number of seconds between 0 and 86400"),
        ({"retry_max": 86401}, "retry_max 86401 must be a number of seconds between 0 and 86400"),
        ({"split_of": "/dev/ttyV0"}, "/dev/ttyV0 cannot be split from itself"),
        ({"data_bits": 9}, "data_bits 9 must be 5, 6, 7 or 8"),
        ({"parity": "purple"}, "parity 'purple' must be one of"),
        ({"stop_bits": "3"}, "stop_bits '3' must be one of 1, 1.5, 2"),
        ({"pin_baud": "yes"}, "pin_baud 'yes' must be true or false"),
        ({"mode": 0o1777}, "mode 01777 is out of range 0000-0777"),  # octal, as it was written
        ({"mode": True}, "mode True must be an octal number such as 0660"),
    ],
)
def test_invalid_values_are_refused(kwargs: dict, message: str) -> None:
    base = {"device": "/dev/ttyV0", "target": "h:1"}
    with pytest.raises(ConfigError) as caught:
        PortConfig(**{**base, **kwargs})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_modes() -> None:
    assert parse_mode("0660") == 0o660
    assert parse_mode("600") == 0o600
    for bad, message in (("rw", "mode 'rw' is not an octal number such as 0660"),
                         ("0999", "mode '0999' is not an octal number such as 0660"),
                         ("7777", "mode 07777 is out of range 0000-0777"),
                         ("1777", "mode 01777 is out of range 0000-0777")):
        with pytest.raises(ConfigError) as caught:
            parse_mode(bad)
        assert str(caught.value) == message


def test_render_is_commented_for_people(tmp_path: Path) -> None:
    save(tmp_path / "vcom.toml", [PortConfig(device="/dev/a", target="h:1")])
    assert HEADER.startswith("# vcom virtual ports and shares")
    assert (tmp_path / "vcom.toml").read_text().startswith(HEADER)
