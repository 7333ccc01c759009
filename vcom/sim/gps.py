"""``sim:gps``: an NMEA 0183 receiver driving round a fixed point, and the NMEA helpers the demo reads
positions with."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from .line import CallLater, Clock, TimerHandle
from .uart import Inputs, SimDevice

GPS_BACKLOG = 1024  # bytes of sentences a GPS keeps for a slow line before dropping
CENTER = (52.5200, 13.4050)  # the GPS drives round this point (degrees N, E)
CIRCLE_RADIUS_M = 100.0
CIRCLE_PERIOD_S = 360  # one lap in six minutes: about 3.4 knots
ALTITUDE_M = 34.0
GEOID_SEPARATION_M = 39.0
_METRES_PER_DEGREE = 111_320.0
_KNOTS_PER_MPS = 3600 / 1852


def nmea_checksum(body: str) -> str:
    """The NMEA 0183 checksum of ``body`` (the text between ``$`` and ``*``): XOR of its
    bytes as two upper-case hex digits.  Raises ValueError for non-ASCII text."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def parse_position(line: str) -> tuple[float, float] | None:
    """Latitude and longitude in decimal degrees from a GGA or RMC sentence with a fix.

    Any talker (``GP``, ``GN``...) is accepted.  Returns None for other
    sentences, a wrong or missing checksum, no fix, or malformed fields.
    """
    text = line.strip()
    if len(text) < 4 or not text.startswith("$") or text[-3] != "*":
        return None
    body, checksum = text[1:-3], text[-2:]
    try:
        if nmea_checksum(body) != checksum.upper():
            return None
    except ValueError:
        return None
    fields = body.split(",")
    kind = fields[0][2:]
    if kind == "GGA" and len(fields) > 6 and fields[6] not in ("", "0"):
        lat, ns, lon, ew = fields[2:6]
    elif kind == "RMC" and len(fields) > 6 and fields[2] == "A":
        lat, ns, lon, ew = fields[3:7]
    else:
        return None
    latitude = _nmea_degrees(lat, ns, "N", "S", 90.0)
    longitude = _nmea_degrees(lon, ew, "E", "W", 180.0)
    if latitude is None or longitude is None:
        return None
    return latitude, longitude


def _nmea_degrees(value: str, hemisphere: str, positive: str, negative: str, limit: float) -> float | None:
    # NMEA writes angles as (d)ddmm.mmmm: the last two integer digits are minutes.
    whole = value.split(".", 1)[0]
    if hemisphere not in (positive, negative) or len(whole) < 3 or not whole.isdigit():
        return None
    try:
        minutes = float(value[len(whole) - 2 :])
    except ValueError:
        return None
    degrees = int(whole[:-2]) + minutes / 60
    if minutes >= 60 or degrees > limit:
        return None
    return -degrees if hemisphere == negative else degrees


@dataclass(frozen=True, slots=True)
class _Fix:
    latitude: float
    longitude: float
    speed_knots: float
    course: float


def _fix_at(second: int) -> _Fix:
    """Where the simulated receiver is: driving clockwise round CENTER, one lap per period."""
    angle = 2 * math.pi * (second % CIRCLE_PERIOD_S) / CIRCLE_PERIOD_S
    lat0, lon0 = CENTER
    north = CIRCLE_RADIUS_M * math.cos(angle)
    east = CIRCLE_RADIUS_M * math.sin(angle)
    latitude = lat0 + north / _METRES_PER_DEGREE
    longitude = lon0 + east / (_METRES_PER_DEGREE * math.cos(math.radians(lat0)))
    speed = 2 * math.pi * CIRCLE_RADIUS_M / CIRCLE_PERIOD_S * _KNOTS_PER_MPS
    course = (math.degrees(angle) + 90.0) % 360.0  # clockwise: heading is 90 degrees ahead
    return _Fix(latitude, longitude, speed, course)


def _nmea_angle(value: float, degree_digits: int) -> str:
    minutes_total = round(abs(value) * 60, 5)
    degrees, minutes = divmod(minutes_total, 60)
    return f"{int(degrees):0{degree_digits}d}{minutes:08.5f}"


def _sentence(body: str) -> str:
    return f"${body}*{nmea_checksum(body)}\r\n"


def gps_sentences(second: int) -> str:
    """The GGA and RMC sentences the receiver sends for UTC ``second`` (Unix time)."""
    fix = _fix_at(second)
    moment = datetime.fromtimestamp(second, UTC)
    hms = moment.strftime("%H%M%S.00")
    lat = f"{_nmea_angle(fix.latitude, 2)},{'N' if fix.latitude >= 0 else 'S'}"
    lon = f"{_nmea_angle(fix.longitude, 3)},{'E' if fix.longitude >= 0 else 'W'}"
    # GGA: fix quality 1 (GPS), 8 satellites, HDOP 0.9, altitude and geoid separation in metres.
    gga = f"GPGGA,{hms},{lat},{lon},1,08,0.9,{ALTITUDE_M:.1f},M,{GEOID_SEPARATION_M:.1f},M,,"
    # RMC (NMEA 2.3): status A, speed in knots, course over ground, date, no magnetic
    # variation, mode A (autonomous).
    date = moment.strftime("%d%m%y")
    rmc = f"GPRMC,{hms},A,{lat},{lon},{fix.speed_knots:.2f},{fix.course:.1f},{date},,,A"
    return _sentence(gga) + _sentence(rmc)


class GpsDevice(SimDevice):
    """An NMEA 0183 receiver with a fix: GGA and RMC once a second, on the second."""

    name = "sim:gps"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        call_later: CallLater | None = None,
        utc: Clock | None = None,
    ) -> None:
        super().__init__(clock=clock, call_later=call_later)
        self._utc = utc or time.time
        self._timer: TimerHandle | None = None
        self._last_second: int | None = None
        self._counts.update(sentences=0, sentences_dropped=0)

    def _inputs(self) -> Inputs:
        ready = self._sink is not None
        return Inputs(cts=ready, dsr=ready)

    def _started(self) -> None:
        self._last_second = None
        self._schedule_fix()

    def _stopped(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule_fix(self) -> None:
        now = self._utc()
        self._timer = self._time.call_later(math.floor(now) + 1 - now, self._fix_due)

    def _fix_due(self) -> None:
        self._timer = None
        # asyncio may run a timer up to its clock resolution early: allow a
        # millisecond so that 12:00:00.9999999 counts as 12:00:01.
        second = math.floor(self._utc() + 0.001)
        if second != self._last_second:
            self._last_second = second
            self._emit(gps_sentences(second).encode("ascii"))
        self._schedule_fix()

    def _emit(self, sentences: bytes) -> None:
        # A receiver does not wait for its reader: sentences nobody reads, or that a
        # slow line cannot carry, are lost (a bounded backlog rides out a short stall).
        if self._paused or self._rx.pending + len(sentences) > GPS_BACKLOG:
            self._counts["dropped"] += len(sentences)
            self._counts["sentences_dropped"] += 2
            return
        self._counts["sentences"] += 2
        self._receive(sentences)
