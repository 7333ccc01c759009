"""TLS for links (client role) and shares (server role): the settings, the contexts built from the
files they name, and a handshake's outcome in vcom's words.

The stdlib ``ssl`` module (OpenSSL) does the work.  Rules kept here:

* A client always verifies the server: its chain against ``--tls-ca`` (default: the system's trust
  store) and its name against ``--tls-server-name`` (default: the target's host), which is also sent
  as SNI.  Only ``--tls-insecure`` turns verification off, and status shows it.
* A share with ``--tls-client-ca`` admits only clients whose certificate that CA signed (mutual TLS).
* TLS 1.2 is the oldest version offered or accepted.
* A private key file that every user may read is refused: whoever can read it can impersonate the
  server or the client.
* Every refusal is a :class:`vcom.config.ConfigError` naming the setting (``tls_key``), so that the
  command line shows the option as typed and the config file its key; every failed handshake is one
  line (:func:`handshake_failure`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .certs import CertificateError, CertInfo, ExpiryWarning, iso_time, read_certificate, read_pem_file
from .config import ConfigError

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS handshake may take, either role
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True, slots=True)
class ClientTls:
    """A port's TLS settings (``--tls-*`` of ``vcom add``)."""

    ca: str | None = None  # None: the system's trust store
    cert: str | None = None  # client certificate, with ``key``
    key: str | None = None
    server_name: str | None = None  # None: the target's host
    insecure: bool = False  # no verification at all


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A share's TLS settings (``--tls-cert``, ``--tls-key``, ``--tls-client-ca`` of ``vcom share``)."""

    cert: str
    key: str
    client_ca: str | None = None  # every client must present a certificate this CA signed


# -- files and contexts --------------------------------------------------------------------------


def check_file(path: str, key: str) -> os.stat_result:
    """A file that exists and is one; ConfigError naming ``key`` otherwise."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError("does not exist", key, path) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {(exc.strerror or str(exc)).lower()}", key, path) from None
    if not stat.S_ISREG(info.st_mode) and not (key.endswith("ca") and stat.S_ISDIR(info.st_mode)):
        raise ConfigError("is not a file", key, path)
    return info


def check_key_file(path: str, key: str) -> None:
    info = check_file(path, key)
    if info.st_mode & stat.S_IROTH:
        raise ConfigError(f"is readable by every user (mode {stat.S_IMODE(info.st_mode):04o}); a private key must not "
                          f"be: chmod o-r {path}", key, path)


def _read_text(path: str, key: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read(1 << 20)
    except OSError as exc:
        raise ConfigError(f"cannot be read: {(exc.strerror or str(exc)).lower()}", key, path) from None


def _load_pair(context: ssl.SSLContext, cert: str, key: str, cert_key: str = "tls_cert",
               key_key: str = "tls_key") -> None:
    check_file(cert, cert_key)
    check_key_file(key, key_key)
    if "-----BEGIN CERTIFICATE-----" not in _read_text(cert, cert_key):
        raise ConfigError("holds no PEM certificate (-----BEGIN CERTIFICATE-----)", cert_key, cert)
    key_text = _read_text(key, key_key)
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError("holds no PEM private key (-----BEGIN PRIVATE KEY-----)", key_key, key)
    if "ENCRYPTED" in key_text:
        raise ConfigError("is protected by a passphrase, which vcom cannot ask for: store it without one "
                          "(and readable only by its owner)", key_key, key)

    def no_passphrase() -> str:
        raise ConfigError("is protected by a passphrase, which vcom cannot ask for", key_key, key)

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"is not the key of the certificate {cert}", key_key, key) from None
        raise ConfigError(f"cannot be used with {key}: {_ssl_words(exc)}", cert_key, cert) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {(exc.strerror or str(exc)).lower()}", cert_key, cert) from None


def _load_ca(context: ssl.SSLContext, path: str, key: str) -> None:
    info = check_file(path, key)
    try:
        if stat.S_ISDIR(info.st_mode):  # a hashed directory, as `openssl rehash` makes
            context.load_verify_locations(capath=path)
        else:
            context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            raise ConfigError("holds no PEM certificate", key, path) from None
        raise ConfigError(f"cannot be used as CA: {_ssl_words(exc)}", key, path) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {(exc.strerror or str(exc)).lower()}", key, path) from None


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """The context of a port's connections; ConfigError if a file cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = MINIMUM_VERSION
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.ca:
        _load_ca(context, tls.ca, "tls_ca")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert and tls.key:
        _load_pair(context, tls.cert, tls.key)
    return context


def server_context(tls: ServerTls) -> ssl.SSLContext:
    """The context of a share's listener; ConfigError if a file cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_pair(context, tls.cert, tls.key)
    if tls.client_ca:
        _load_ca(context, tls.client_ca, "tls_client_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def own_certificate(path: str) -> CertInfo | None:
    try:
        return read_pem_file(path)
    except (OSError, CertificateError):
        return None


# -- handshakes ----------------------------------------------------------------------------------

# OpenSSL's reasons for "this is not TLS at all": the other side sent plain text (a telnet negotiation,
# an HTTP request) where a TLS record was due.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
            "PACKET_LENGTH_TOO_LONG", "HTTPS_PROXY_REQUEST", "RECORD_TOO_LARGE"}
# X509_V_ERR_* codes (x509_vfy.h) seen in verification.
_EXPIRED, _NOT_YET_VALID = 10, 9
_NAME_MISMATCH = {62, 64}  # hostname, IP address
_UNTRUSTED = {2, 18, 19, 20, 21}
# Alerts the other side sends about our certificate, as OpenSSL names them.
_ALERTS_ABOUT_OUR_CERT = {
    "TLSV1_ALERT_UNKNOWN_CA": "is not signed by a CA it trusts",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "is bad",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "is not acceptable",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "is of an unsupported kind",
    "TLSV1_ALERT_ACCESS_DENIED": "is not allowed",
    "TLSV1_ALERT_DECRYPT_ERROR": "does not match its key",
}


def handshake_failure(exc: BaseException, peer: str, *, server_name: str | None = None,
                      timeout: float = HANDSHAKE_TIMEOUT, presented_cert: bool = False) -> str:
    """One line for a failed handshake.  ``peer`` is "server" (we are the client) or "client"."""
    if isinstance(exc, TimeoutError):
        return f"the TLS handshake did not finish within {timeout:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _EXPIRED:
            return f"the {peer}'s certificate has expired"
        if code == _NOT_YET_VALID:
            return f"the {peer}'s certificate is not valid yet (or a clock is wrong)"
        if code in _NAME_MISMATCH:
            return (f"the server's certificate is not for {server_name!r} (name mismatch; --tls-server-name sets the "
                    "name to check)")
        if code in _UNTRUSTED:
            if peer == "client":
                return f"the client's certificate is not signed by --tls-client-ca ({exc.verify_message})"
            return ("the server's certificate is not signed by a trusted CA (--tls-ca names the CA to trust): "
                    f"{exc.verify_message}")
        return f"the {peer}'s certificate was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _NOT_TLS:
            return f"the {peer} does not speak TLS (it sent plain data)"
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "the client presented no certificate; --tls-client-ca requires one"
        if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED" or (reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
                                                               and peer == "server" and not presented_cert):
            return "the server requires a client certificate (--tls-cert, --tls-key)"
        if reason in _ALERTS_ABOUT_OUR_CERT:
            mine = "our client certificate" if peer == "server" else "this share's certificate"
            return f"the {peer} refused {mine}: it {_ALERTS_ABOUT_OUR_CERT[reason]}"
        if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"):
            return f"the {peer} offers no TLS version vcom accepts (TLS 1.2 or newer)"
        if reason in ("NO_SHARED_CIPHER", "SSLV3_ALERT_HANDSHAKE_FAILURE"):
            return f"the {peer} refused the handshake (no common cipher or certificate type)"
        if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
            return f"the {peer} closed the connection during the TLS handshake"
        return f"TLS error: {_ssl_words(exc)}"
    if isinstance(exc, ConnectionError | EOFError):
        return f"the {peer} closed the connection during the TLS handshake"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno).lower()} during the TLS handshake"
    return f"TLS handshake failed: {exc}"


def _ssl_words(exc: ssl.SSLError) -> str:
    """OpenSSL's reason without its bracketed codes and source locations."""
    reason = exc.reason
    if reason:
        return reason.replace("_", " ").lower()
    text = str(exc.args[1] if len(exc.args) > 1 else exc)
    return text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0].strip() or "unknown"


@dataclass(frozen=True, slots=True)
class Session:
    """What one successful handshake showed."""

    version: str
    cipher: str
    peer: CertInfo | None  # the other side's certificate (None: it sent none)
    at: float  # time.time() of the handshake

    @classmethod
    def of(cls, ssl_object: Any) -> Session:
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            peer = read_certificate(der) if der else None
        except CertificateError:
            peer = None
        cipher = ssl_object.cipher() if ssl_object is not None else None
        version = ssl_object.version() if ssl_object is not None else None
        return cls(version or "?", cipher[0] if cipher else "?", peer, time.time())

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "cipher": self.cipher,
                "peer": self.peer.to_json() if self.peer is not None else None}


class ClientSide:
    """A link's TLS: its context (built at the first connect, again on reload), what the last handshake
    showed, and the warning about a server certificate that expires soon."""

    def __init__(self, options: ClientTls, host: str, name: str) -> None:
        self.options = options
        self.server_name = options.server_name or host
        self._name = name
        self._context: ssl.SSLContext | None = None
        self.session: Session | None = None
        self.error: str | None = None  # why the files cannot be used, until they can
        self.expiry = ExpiryWarning(f"{name}: the server's certificate")

    def context(self) -> ssl.SSLContext:
        """ConfigError if the files cannot be used (then the next connect attempt tries again)."""
        if self._context is None:
            try:
                self._context = client_context(self.options)
            except ConfigError as exc:
                self.error = str(exc)
                raise
            self.error = None
        return self._context

    def reload(self) -> str | None:
        """Read the files again for the next handshakes; the connection up now stays.  An error keeps the
        context in use and is returned."""
        try:
            context = client_context(self.options)
        except ConfigError as exc:
            return str(exc)
        self._context = context
        self.error = None
        log.info("%s: TLS files read again; the next connection uses them", self._name)
        return None

    def connected(self, ssl_object: Any, alive: Callable[[], bool]) -> Session:
        """A handshake succeeded; ``alive()`` tells while its connection lasts (for the daily expiry check)."""
        self.session = session = Session.of(ssl_object)
        self.expiry.check(session.peer)
        self.expiry.keep_checking(asyncio.get_running_loop(), lambda: session.peer, alive)
        return session

    def status(self) -> dict[str, Any]:
        options = self.options
        session = self.session
        return {
            "verify": not options.insecure,
            "insecure": options.insecure,
            "server_name": self.server_name,
            "ca": None if options.insecure else (options.ca or "system trust store"),
            "client_cert": options.cert,
            **(session.to_json() if session is not None else {"version": None, "cipher": None, "peer": None}),
            "warning": self.expiry.text,
            "error": self.error,
        }


class ServerSide:
    """A share's TLS: the context new connections get (built at start, again on reload: connected clients
    keep theirs), what its own certificate says, and the warning before it expires."""

    def __init__(self, options: ServerTls, name: str) -> None:
        self.options = options
        self.context = server_context(options)  # ConfigError: the share does not start
        self.certificate = own_certificate(options.cert)
        self.loaded_at = time.time()
        self.error: str | None = None  # the last reload that failed
        self.expiry = ExpiryWarning(f"share {name}: its certificate")
        self.expiry.check(self.certificate)
        self._name = name

    def reload(self) -> str | None:
        """Read the files again; an error keeps the context in use and is returned (and shown in status)."""
        try:
            context = server_context(self.options)
        except ConfigError as exc:
            self.error = f"reload failed, still using the files as read at {iso_time(self.loaded_at)}: {exc}"
            log.error("share %s: %s", self._name, self.error)
            return str(exc)
        self.context = context
        self.certificate = own_certificate(self.options.cert)
        self.loaded_at = time.time()
        self.error = None
        self.expiry.check(self.certificate)
        log.info("share %s: TLS files read again; new connections use them, connected clients stay", self._name)
        return None

    def status(self) -> dict[str, Any]:
        return {
            "cert": self.options.cert,
            "key": self.options.key,
            "client_ca": self.options.client_ca,
            "client_auth": self.options.client_ca is not None,
            "certificate": self.certificate.to_json() if self.certificate is not None else None,
            "loaded_at": iso_time(self.loaded_at),
            "warning": self.expiry.text,
            "error": self.error,
        }
