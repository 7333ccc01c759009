"""The parts of TLS support one at a time: reading certificates (checked against ``openssl x509``), the
once-a-day expiry warning (with a clock the test turns), the checks of certificate and key files, the
TLS settings of ports and shares in the config file and on the command line, and the metrics."""

from __future__ import annotations

import asyncio
import calendar
import logging
import re
import subprocess
import time
from pathlib import Path

import pytest
from peers import Vcom, free_port
from tls_peers import Certs, days, wait_query

from vcom import certs as certs_module
from vcom.certs import CertInfo, ExpiryWarning, read_pem_file
from vcom.config import ConfigError, PortConfig, ShareConfig, ShareError
from vcom.configfile import ConfigFile, load
from vcom.metrics import port_metrics, share_metrics
from vcom.tls import ClientTls, ServerTls, client_context, server_context

# -- certificates -----------------------------------------------------------------------------------------------


def openssl_cert(tmp_path: Path, subject: str, san: str, valid_days: int) -> Path:
    cert = tmp_path / "o.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp_path / "o.key"), "-out", str(cert), "-days", str(valid_days), "-subj", subject,
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True, timeout=30)
    return cert


def test_certificate_fields_agree_with_openssl(tmp_path: Path) -> None:
    cert = openssl_cert(tmp_path, "/C=DE/O=Plant 7/OU=Line 2/CN=plc.example", "DNS:plc.example,IP:10.0.0.1,IP:::1",
                        40)
    shown = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-enddate", "-startdate"],
                           capture_output=True, text=True, check=True).stdout
    info = read_pem_file(str(cert))
    assert info.subject == "C=DE, O=Plant 7, OU=Line 2, CN=plc.example" == info.issuer  # self-signed
    assert info.names == ["plc.example", "10.0.0.1", "::1"]
    end = re.search(r"notAfter=(.*)", shown).group(1)  # type: ignore[union-attr]
    start = re.search(r"notBefore=(.*)", shown).group(1)  # type: ignore[union-attr]
    assert info.not_after == calendar.timegm(time.strptime(end, "%b %d %H:%M:%S %Y GMT"))
    assert info.not_before == calendar.timegm(time.strptime(start, "%b %d %H:%M:%S %Y GMT"))
    assert 39.9 < info.days_left() <= 40


def test_trustme_certificates_and_generalized_times(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    # Past 2049 a certificate's time is a GeneralizedTime, not a UTCTime.
    pair = certs.issue("far", "device.example", common_name="device", not_after=days(365 * 40))
    info = read_pem_file(str(pair.cert))
    assert info.subject.endswith("CN=device") and info.names == ["device.example"]
    assert 365 * 40 - 1 < info.days_left() < 365 * 40 + 1


def test_not_a_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(certs_module.CertificateError):
        read_pem_file(str(junk))


def _info(days_left: float) -> CertInfo:
    now = time.time()
    return CertInfo("CN=device", "CN=ca", now - 86400, now + days_left * 86400, [])


def test_expiry_warning_is_logged_once_a_day(caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]
    warning = ExpiryWarning("port X: the server's certificate", clock=lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="vcom.certs")
    assert warning.check(_info(30)) is None and not caplog.records
    for advance in (0, 3600, 20 * 3600):  # reconnects within the day: shown in status, logged once
        clock[0] += advance
        assert "expires in 5.0 days" in (warning.check(_info(5)) or "")
    assert len(caplog.records) == 1
    clock[0] += 4 * 3600  # a day after the first
    assert "expired 1.0 days ago" in (warning.check(_info(-1)) or "")
    assert len(caplog.records) == 2 and "(CN=device) expired" in caplog.records[1].getMessage()
    assert warning.check(None) is None and warning.text is None


def test_expiry_is_checked_again_while_a_connection_lasts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs_module, "WARNING_INTERVAL", 0.05)
    checks: list[float] = []

    async def main() -> None:
        warning = ExpiryWarning("x", clock=lambda: len(checks) * 86400.0)
        alive = [True]

        def info() -> CertInfo:
            checks.append(time.monotonic())
            return _info(3)

        warning.keep_checking(asyncio.get_running_loop(), info, lambda: alive[0])
        while len(checks) < 3:
            await asyncio.sleep(0.01)
        alive[0] = False
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert len(checks) == 3  # checked every "day" while alive, never after


# -- files ------------------------------------------------------------------------------------------------------


def test_key_files_every_user_may_read_are_refused(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    pair = certs.server()
    pair.key.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        server_context(ServerTls(str(pair.cert), str(pair.key)))
    assert info.value.key == "tls_key" and "readable by every user (mode 0644)" in str(info.value)
    pair.key.chmod(0o640)  # the owner's group (e.g. vcom) may read it
    server_context(ServerTls(str(pair.cert), str(pair.key)))


@pytest.mark.parametrize(("case", "key", "reason"), [
    ("missing-cert", "tls_cert", "does not exist"),
    ("cert-is-key", "tls_cert", "holds no PEM certificate"),
    ("key-is-cert", "tls_key", "holds no PEM private key"),
    ("passphrase", "tls_key", "protected by a passphrase"),
    ("mismatch", "tls_key", "is not the key of the certificate"),
    ("ca-is-key", "tls_ca", "holds no PEM certificate"),
])
def test_unusable_files_name_the_setting(tmp_path: Path, case: str, key: str, reason: str) -> None:
    certs = Certs(tmp_path)
    pair, other = certs.client(), certs.client("other")
    options = {"cert": str(pair.cert), "key": str(pair.key), "ca": str(certs.ca_file)}
    if case == "missing-cert":
        options["cert"] = str(tmp_path / "none.crt")
    elif case == "cert-is-key":
        options["cert"] = str(pair.key)
    elif case == "key-is-cert":
        options["key"] = str(pair.cert)
        pair.cert.chmod(0o600)
    elif case == "passphrase":
        locked = tmp_path / "locked.key"
        subprocess.run(["openssl", "pkey", "-in", str(pair.key), "-aes256", "-passout", "pass:secret", "-out",
                        str(locked)], check=True, capture_output=True, timeout=30)
        locked.chmod(0o600)
        options["key"] = str(locked)
    elif case == "mismatch":
        options["key"] = str(other.key)
    elif case == "ca-is-key":
        options["ca"] = str(pair.key)
    with pytest.raises(ConfigError) as info:
        client_context(ClientTls(**options))  # type: ignore[arg-type]
    assert info.value.key == key and reason in str(info.value) and "\n" not in str(info.value)


# -- settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"target": "tcp://h:1", "tls_ca": "/ca.pem"}, "tls_ca '/ca.pem' needs a TLS target"),
    ({"tls_cert": "/c.pem"}, "tls_cert '/c.pem' needs tls_key too"),
    ({"tls_key": "/k.pem"}, "tls_key '/k.pem' needs tls_cert too"),
    ({"tls_insecure": True, "tls_ca": "/ca.pem"}, "tls_insecure turns verification off, so tls_ca would not be used"),
    ({"tls_ca": "ca.pem"}, "tls_ca 'ca.pem' must be an absolute file path"),
    ({"tls_server_name": "a b"}, "tls_server_name 'a b' is not a host name"),
    ({"tls_insecure": "yes"}, "tls_insecure 'yes' must be true or false"),
    ({"split_of": "/dev/ttyA", "tls_ca": "/ca.pem"}, "is not for a split port"),
])
def test_port_tls_settings_are_checked(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        PortConfig(**{"device": "/dev/ttyV9", "target": "tcp+tls://h:1", **values})
    assert message in str(info.value)


@pytest.mark.parametrize(("values", "message"), [
    ({"tls_cert": "/c.pem"}, "tls_cert '/c.pem' needs tls_key too"),
    ({"tls_client_ca": "/ca.pem"}, "tls_client_ca '/ca.pem' needs tls_cert and tls_key"),
    ({"tls_cert": "/c", "tls_key": "/k", "protocol": "udp"}, "UDP carries no TLS"),
    ({"allow": "10.0.0.0/8"}, "allow '10.0.0.0/8' must be a list"),
])
def test_share_tls_settings_are_checked(values: dict, message: str) -> None:
    with pytest.raises(ShareError) as info:
        ShareConfig(**{"device": "sim:echo", **values})
    assert message in str(info.value)


def test_tls_settings_round_trip_through_the_file_and_stay_out_of_plain_tables(tmp_path: Path) -> None:
    port = PortConfig(device="/dev/ttyV0", target="rfc2217+tls://plc.example:4001", tls_ca="/etc/vcom/ca.pem",
                      tls_cert="/etc/vcom/c.pem", tls_key="/etc/vcom/c.key", tls_server_name="plc.example")
    plain = PortConfig(device="/dev/ttyV1", target="tcp://h:1")
    share = ShareConfig(device="sim:echo", tls_cert="/s.crt", tls_key="/s.key", tls_client_ca="/ca.pem",
                        allow=("192.0.2.0/24", "2001:db8::/32"))
    path = tmp_path / "vcom.toml"
    config = ConfigFile(path)
    config.append("port", [port.to_json(), plain.to_json()])
    config.append("share", [share.to_json()])
    loaded = load(path)
    assert loaded.errors == [] and loaded.ports == [port, plain] and loaded.shares == [share]
    assert path.read_text().count("tls_") == 4 + 3 and 'allow = ["192.0.2.0/24", "2001:db8::/32"]' in path.read_text()
    options = port.parsed_target.tls_options
    assert options == ClientTls("/etc/vcom/ca.pem", "/etc/vcom/c.pem", "/etc/vcom/c.key", "plc.example", False)
    assert str(port.parsed_target) == "rfc2217+tls://plc.example:4001"


def test_command_line_names_the_options_as_typed(vcom: Vcom, tmp_path: Path) -> None:
    certs = Certs(tmp_path / "pki")
    pair = certs.server()
    pair.key.chmod(0o604)
    cases = [
        (["add", str(tmp_path / "t0"), "tcp+tls://h:1", "--tls-cert", str(pair.cert), "--tls-key", "pki/ca-server.key"],
         "--tls-key pki/ca-server.key is readable by every user (mode 0604)"),
        (["add", str(tmp_path / "t0"), "tcp+tls://h:1", "--tls-cert", "c.pem"], "--tls-cert c.pem needs --tls-key too"),
        (["add", str(tmp_path / "t0"), "tcp+tls://h:1", "--tls-insecure", "--tls-ca", "ca.pem"],
         "--tls-insecure turns verification off, so --tls-ca would not be used"),
        (["add", str(tmp_path / "t0"), "udp+tls://h:1"], "UDP has no TLS"),
        (["share", "sim:echo", "--tls-client-ca", "ca.pem"], "--tls-client-ca ca.pem needs --tls-cert and --tls-key"),
        (["share", "sim:echo", "--allow", "10.0.0.0/33"], "--allow '10.0.0.0/33' is not an address or network"),
        (["share", "sim:echo", "--tls-cert", "c.pem", "--tls-key", "k.pem"], "--tls-cert c.pem does not exist"),
    ]
    for args, expected in cases:
        result = subprocess.run([*vcom_command(), *args], env=vcom.env, capture_output=True, text=True, timeout=30,
                                cwd=tmp_path)
        assert result.returncode != 0 and result.stderr.count("\n") == 1, (args, result.stderr)
        assert result.stderr.startswith("vcom: ") and expected in result.stderr, (args, result.stderr)
        assert "tls_" not in result.stderr and "Traceback" not in result.stderr
    assert not (vcom.home / "vcom.pid").exists()  # refused before a manager was started


def vcom_command() -> list[str]:
    import sys

    return [sys.executable, "-m", "vcom"]


def test_a_port_in_the_file_with_an_unusable_key_says_so_and_retries(vcom: Vcom, tmp_path: Path) -> None:
    certs = Certs(tmp_path / "pki")
    pair = certs.client()
    pair.key.chmod(0o644)
    tty = tmp_path / "ttyK0"
    (vcom.home / "vcom.toml").write_text(
        f'[[port]]\ndevice = "{tty}"\ntarget = "tcp+tls://127.0.0.1:{free_port()}"\nconnect = "always"\n'
        f'tls_cert = "{pair.cert}"\ntls_key = "{pair.key}"\n')
    vcom.ok("share", "sim:echo", "--listen", f"127.0.0.1:{free_port()}")  # starts the manager
    status = wait_query(vcom, tty, lambda s: s["last_error"], "the port's reason")
    assert "TLS files: tls_key" in status["last_error"] and "readable by every user" in status["last_error"]
    assert status["tls"]["error"] and status["state"] != "connected"
    pair.key.chmod(0o600)  # fixed: the next attempt uses it (and finds nobody listening)
    wait_query(vcom, tty, lambda s: "TLS files" not in (s["last_error"] or ""), "the fixed key used")


def test_metrics_show_tls_sessions_and_refusals() -> None:
    port = {"device": "/dev/ttyV0", "target": "tcp+tls://h:1", "tls": {
        "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "insecure": False,
        "peer": {"not_after": "2030-01-01T00:00:00Z"}}}
    share = {"device": "sim:echo", "listen": "127.0.0.1:1", "denied_clients": 3, "tls_failures": 2,
             "tls": {"certificate": {"not_after": "2031-01-01T00:00:00Z"}}}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in [*port_metrics([port]), *share_metrics([share])] for s in family.samples}
    labels = (("cipher", "TLS_AES_256_GCM_SHA384"), ("device", "/dev/ttyV0"), ("target", "tcp+tls://h:1"),
              ("verified", "true"), ("version", "TLSv1.3"))
    assert samples[("vcom_port_tls_info", labels)] == 1.0
    assert samples[("vcom_port_tls_cert_not_after_seconds", (("device", "/dev/ttyV0"), ("target", "tcp+tls://h:1")))] \
        == 1893456000.0
    share_labels = (("device", "sim:echo"), ("listen", "127.0.0.1:1"))
    assert samples[("vcom_share_denied_clients_total", share_labels)] == 3.0
    assert samples[("vcom_share_tls_failures_total", share_labels)] == 2.0
    assert samples[("vcom_share_tls_cert_not_after_seconds", share_labels)] == 1924992000.0
