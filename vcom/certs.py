"""What a certificate says (subject, names, validity) and the warning before it expires.

The stdlib ``ssl`` module decodes a peer's certificate only after it verified it, and never one read
from a file or one an unverified (``--tls-insecure``) peer sent.  Status needs the subject and the
expiry in all three cases, so this module reads them from the DER bytes itself: an X.509 certificate
is nested tag-length-value records (RFC 5280, section 4.1), and only a handful of its fields are
read here.  Nothing here decides whether a certificate is trusted; that is OpenSSL's job.
"""

from __future__ import annotations

import asyncio
import calendar
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

EXPIRY_WARNING_DAYS = 14
WARNING_INTERVAL = 86400.0  # an expiry warning is repeated at most once a day

_ATTRIBUTES = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
    "1.2.840.113549.1.9.1": "emailAddress",
}
_SUBJECT_ALT_NAME = "2.5.29.17"
_SEQUENCE, _SET, _OCTETS, _UTC_TIME, _GENERALIZED_TIME, _OID = 0x30, 0x31, 0x04, 0x17, 0x18, 0x06
_DNS_NAME, _IP_ADDRESS = 0x82, 0x87  # GeneralName [2] and [7], implicitly tagged
_EXTENSIONS = 0xA3
_STRING_CODECS = {0x1E: "utf-16-be", 0x1C: "utf-32-be", 0x14: "latin-1"}  # BMPString, UniversalString, T61String


class CertificateError(ValueError):
    """Bytes that are not an X.509 certificate this module can read."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str  # "O=Plant, CN=device.example", in the certificate's order
    issuer: str
    not_before: float  # seconds since the epoch
    not_after: float
    names: list[str] = field(default_factory=list)  # subjectAltName DNS names and IP addresses

    def days_left(self, now: float | None = None) -> float:
        return (self.not_after - (time.time() if now is None else now)) / 86400

    def to_json(self, now: float | None = None) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "names": list(self.names),
            "not_before": iso_time(self.not_before),
            "not_after": iso_time(self.not_after),
            "expires_in_days": round(self.days_left(now), 2),
        }


def iso_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def read_certificate(der: bytes) -> CertInfo:
    """Subject, issuer, validity and names of one DER-encoded certificate."""
    try:
        certificate = _first(der, _SEQUENCE)
        tbs = _items(_first(certificate, _SEQUENCE))
        if tbs and tbs[0][0] == 0xA0:  # explicit [0] version; absent in v1 certificates
            tbs = tbs[1:]
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then optional fields
        issuer, validity, subject = tbs[2][1], tbs[3][1], tbs[4][1]
        times = _items(validity)
        names: list[str] = []
        for tag, value in tbs[6:]:
            if tag == _EXTENSIONS:
                names = _alt_names(_first(value, _SEQUENCE))
        return CertInfo(_name(subject), _name(issuer), _time(*times[0]), _time(*times[1]), names)
    except (IndexError, ValueError) as exc:
        raise CertificateError(f"not a certificate vcom can read ({exc})") from None


def read_pem_file(path: str) -> CertInfo:
    """The first certificate of a PEM file."""
    with open(path, encoding="ascii", errors="replace") as file:
        text = file.read()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise CertificateError("holds no PEM certificate")
    return read_certificate(ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)]))


# -- DER -----------------------------------------------------------------------------------------


def _record(data: bytes, at: int) -> tuple[int, bytes, int]:
    """The record at ``at``: (tag, value, where the next one starts)."""
    tag = data[at]
    length = data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("bad length")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > len(data):
        raise ValueError("truncated")
    return tag, data[at:at + length], at + length


def _items(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    at = 0
    while at < len(data):
        tag, value, at = _record(data, at)
        out.append((tag, value))
    return out


def _first(data: bytes, tag: int) -> bytes:
    found, value, _ = _record(data, 0)
    if found != tag:
        raise ValueError(f"expected tag 0x{tag:02x}, found 0x{found:02x}")
    return value


def _oid(value: bytes) -> str:
    parts = [value[0] // 40, value[0] % 40]
    number = 0
    for byte in value[1:]:
        number = (number << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(number)
            number = 0
    return ".".join(map(str, parts))


def _name(value: bytes) -> str:
    """A Name (RFC 5280 4.1.2.4) as "O=..., CN=...", attributes in the order the certificate has them."""
    parts = []
    for _, rdn in _items(value):
        for _, attribute in _items(rdn):
            (_, oid), (kind, text) = _items(attribute)[:2]
            key = _oid(oid)
            decoded = text.decode(_STRING_CODECS.get(kind, "utf-8"), "replace")
            parts.append(f"{_ATTRIBUTES.get(key, key)}={decoded}")
    return ", ".join(parts)


def _time(tag: int, value: bytes) -> float:
    text = value.decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280: YY < 50 is 20YY
        year = int(text[:2])
        text = f"{2000 + year if year < 50 else 1900 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError("bad time")
    if not text.endswith("Z"):
        raise ValueError("time not in UTC")
    fields = (int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]), int(text[12:14]))
    return float(calendar.timegm((*fields, 0, 0, 0)))


def _alt_names(extensions: bytes) -> list[str]:
    for _, extension in _items(extensions):
        parts = _items(extension)
        if _oid(parts[0][1]) != _SUBJECT_ALT_NAME:
            continue
        names = []
        for tag, value in _items(_first(parts[-1][1], _SEQUENCE)):
            if tag == _DNS_NAME:
                names.append(value.decode("ascii", "replace"))
            elif tag == _IP_ADDRESS and len(value) in (4, 16):
                names.append(str(ipaddress.ip_address(value)))
        return names
    return []


# -- expiry --------------------------------------------------------------------------------------


class ExpiryWarning:
    """The warning about one certificate that expires within ``EXPIRY_WARNING_DAYS``: always in status,
    in the log at most once a day (a link that reconnects every minute must not fill the journal)."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._what = what  # "share /dev/ttyUSB0: its certificate", "/dev/ttyV0: the server's certificate"
        self._clock = clock
        self._logged_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.text: str | None = None

    def check(self, info: CertInfo | None, now: float | None = None) -> str | None:
        """The warning for ``info`` (None when it is not due), logged if the last one is a day old."""
        if info is None:
            self.text = None
            return None
        days = info.days_left(now)
        if days > EXPIRY_WARNING_DAYS:
            self.text = None
            return None
        when = iso_time(info.not_after)
        if days < 0:
            self.text = f"{self._what} ({info.subject or ', '.join(info.names)}) expired {-days:.1f} days ago ({when})"
        else:
            self.text = f"{self._what} ({info.subject or ', '.join(info.names)}) expires in {days:.1f} days ({when})"
        tick = self._clock()
        if self._logged_at is None or tick - self._logged_at >= WARNING_INTERVAL:
            self._logged_at = tick
            log.warning("%s", self.text)
        return self.text

    def keep_checking(self, loop: asyncio.AbstractEventLoop, info: Callable[[], CertInfo | None],
                      alive: Callable[[], bool]) -> None:
        """Check again once a day while ``alive()``: a connection or a share may outlive its certificate."""

        def again() -> None:
            self._timer = None
            if alive():
                self.check(info())
                self._timer = loop.call_later(WARNING_INTERVAL, again)

        self.stop()
        self._timer = loop.call_later(WARNING_INTERVAL, again)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
