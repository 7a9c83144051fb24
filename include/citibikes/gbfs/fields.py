"""Field values of any GBFS version turned into the canonical ones, a column at a time.

Each converter takes one raw value and either returns the canonical value, adding the quirks it
smoothed over to a set (``int_as_bool``, ``rfc3339_time``...), or raises :class:`Invalid`, whose
``kind`` starts the record's reason code (``invalid_type:<key>`` or ``invalid_value:<key>``).

:func:`read_column` applies a converter to a whole column. A column whose values all have the
canonical type already (the usual case: every count an ``int``) is taken as it is after one look
at the set of its types; only the values of other types go through the converter one by one.
There is no second path: a value the column check does not take as it is meets the same
converter a record-by-record reader would use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MAX_POSIX_S = 253_402_300_799
"""9999-12-31T23:59:59Z: later "seconds" are not a time (and would not fit the lake's timestamps)."""
MILLISECONDS_ABOVE = 100_000_000_000
"""A POSIX time above this (year 5138 in seconds, 1973 in milliseconds) was sent in milliseconds."""

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_NONE = type(None)

Converter = Callable[[Any, set[str]], Any]


class Invalid(Exception):
    """A value that cannot be normalized; ``kind`` starts its reason code."""

    kind = "invalid_value"


class WrongType(Invalid):
    kind = "invalid_type"


def as_posix(value: Any, quirks: set[str]) -> int:
    """POSIX seconds from int/float seconds, milliseconds or an RFC 3339 string (quirks:
    ``float_time``, ``ms_timestamp``, ``rfc3339_time``; the caller decides which are normal for its version)."""
    kind = type(value)
    if kind is int:
        seconds = value
    elif kind is float:
        if not math.isfinite(value):
            raise Invalid
        quirks.add("float_time")
        seconds = math.floor(value)
    elif kind is str:
        quirks.add("rfc3339_time")
        return _rfc3339_seconds(value)
    else:
        raise WrongType
    if seconds > MILLISECONDS_ABOVE:
        quirks.add("ms_timestamp")
        seconds //= 1000
    if not 0 <= seconds <= MAX_POSIX_S:
        raise Invalid
    return seconds


def _rfc3339_seconds(text: str) -> int:
    if not _RFC3339.fullmatch(text):
        raise Invalid
    try:
        seconds = math.floor(datetime.fromisoformat(text.upper().replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError):
        raise Invalid from None
    if not 0 <= seconds <= MAX_POSIX_S:
        raise Invalid
    return seconds


def as_count(value: Any, quirks: set[str]) -> int:
    """A whole number; an integral float (``3.0``) is accepted as a quirk. The plausible range is
    validation's job; a number beyond 32 bits is no count at all."""
    kind = type(value)
    if kind is float and value.is_integer():
        quirks.add("float_as_int")
        value, kind = int(value), int
    if kind is not int:
        raise Invalid if kind is float else WrongType
    if not -MAX_COUNT <= value < MAX_COUNT:
        raise Invalid
    return value


MAX_COUNT = 2**31
"""Counts are 32-bit integers in the lake."""


def _counts(values: list[Any]) -> bool:
    present = _present(values)
    return not present or (min(present) >= -MAX_COUNT and max(present) < MAX_COUNT)


def _present(values: list[Any]) -> set[Any]:
    """The distinct values but None (counts and times take few distinct values: min/max of them is cheap)."""
    distinct = set(values)
    distinct.discard(None)
    return distinct


def as_flag(value: Any, quirks: set[str]) -> bool:
    """A boolean; 0/1 integers (Citi Bike's is_installed and friends) are accepted as a quirk."""
    kind = type(value)
    if kind is bool:
        return value
    if kind is int:
        if value in (0, 1):
            quirks.add("int_as_bool")
            return value == 1
        raise Invalid
    raise WrongType


def as_coordinate(value: Any, quirks: set[str]) -> float:
    """Decimal degrees as float (range is validation's job)."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise Invalid
        return value
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise Invalid from None
    raise WrongType


def as_id(value: Any, quirks: set[str]) -> str:
    """An identifier string; numeric ids (a common vendor habit) become their decimal text."""
    kind = type(value)
    if kind is str:
        if not value.strip():
            raise Invalid
        return value
    if kind is int:
        quirks.add("numeric_id")
        return str(value)
    raise WrongType


def as_text(value: Any, quirks: set[str]) -> str:
    if type(value) is str:
        return value
    raise WrongType


def as_str_list(value: Any, quirks: set[str]) -> list[str]:
    if type(value) is list and all(type(item) is str for item in value):
        return value
    raise WrongType


def localized_text(language: str | None) -> Converter:
    """Plain text, or the best entry of a 3.x localized list ``[{"text": .., "language": ..}]``
    (quirk ``localized_name``; ``language_fallback`` when the wanted language is missing)."""

    def convert(value: Any, quirks: set[str]) -> str:
        if type(value) is str:
            return value
        if type(value) is not list:
            raise WrongType
        quirks.add("localized_name")
        return pick_translation(value, language, quirks)

    return convert


def pick_translation(entries: list[Any], language: str | None, quirks: set[str]) -> str:
    """The system language, else the same primary language (``en`` for ``en-US``), else the first."""
    translations = [
        (entry["language"].lower(), entry["text"])
        for entry in entries
        if type(entry) is dict and type(entry.get("text")) is str and type(entry.get("language")) is str
    ]
    if not translations:
        raise Invalid if not entries else WrongType
    wanted = (language or "").lower()
    primary = re.split(r"[-_]", wanted)[0]
    for tag, text in translations:
        if tag == wanted:
            return text
    for tag, text in translations:
        if re.split(r"[-_]", tag)[0] == primary:
            return text
    quirks.add("language_fallback")
    return translations[0][1]


def as_vehicle_types(value: Any, quirks: set[str]) -> list[dict[str, Any]]:
    """GBFS 2.1+ ``vehicle_types_available``: ``[{"vehicle_type_id": .., "count": ..}]``, extra keys dropped."""
    if type(value) is not list:
        raise WrongType
    counts = []
    for entry in value:
        if type(entry) is not dict or "vehicle_type_id" not in entry or "count" not in entry:
            raise WrongType
        counts.append({"vehicle_type_id": as_id(entry["vehicle_type_id"], quirks),
                       "count": as_count(entry["count"], quirks)})
    return counts


@dataclass(frozen=True)
class Kind:
    """How a column of one canonical field is read: the converter, the value types it keeps as they
    are, and what a column of only such values must also satisfy to be kept whole."""

    convert: Converter
    keeps: frozenset[type]
    fine: Callable[[list[Any]], bool] = lambda values: True


def _posix_seconds(values: list[Any]) -> bool:
    present = _present(values)
    return not present or (min(present) >= 0 and max(present) <= MILLISECONDS_ABOVE)


def _not_blank(values: list[Any]) -> bool:
    present = values if None not in values else [value for value in values if value is not None]
    return all(present) and not any(map(str.isspace, present))


COUNT = Kind(as_count, frozenset({int}), _counts)
FLAG = Kind(as_flag, frozenset({bool}))
TIME = Kind(as_posix, frozenset({int}), _posix_seconds)
COORDINATE = Kind(as_coordinate, frozenset({float}))
ID = Kind(as_id, frozenset({str}), _not_blank)
TEXT = Kind(as_text, frozenset({str}))
STR_LIST = Kind(as_str_list, frozenset())
VEHICLE_TYPES = Kind(as_vehicle_types, frozenset())


@dataclass
class Column:
    """A column read by :func:`read_column`."""

    values: list[Any]
    """Canonical values (None where absent or invalid)."""
    problems: dict[int, str] = field(default_factory=dict)
    """Reason code per row index whose value is missing (when required) or invalid."""
    quirks: dict[str, set[int] | range] = field(default_factory=dict)
    """Row indices per quirk smoothed over (a range when it is every row)."""


_ONE = 1  # `_ONE.__eq__` maps 1 and True to True, 0 and False to False


def read_column(values: list[Any], kind: Kind, key: str, *, required: bool) -> Column:
    """Convert every value of one field (``key`` names it in reason codes)."""
    types = set(map(type, values))
    if types <= kind.keeps or (not required and types <= kind.keeps | {_NONE}):
        if kind.fine(values):
            return Column(values)
    elif kind is FLAG and types <= {int, bool} and set(values) <= {0, 1}:  # 0/1 flags, the common quirk
        ints = range(len(values)) if types == {int} else {i for i, value in enumerate(values) if type(value) is int}
        return Column(list(map(_ONE.__eq__, values)), quirks={"int_as_bool": ints})
    column = Column(list(values))
    convert = kind.convert
    for index, value in enumerate(values):
        if value is None:
            if required:
                column.problems[index] = f"missing_field:{key}"
            continue
        found: set[str] = set()
        try:
            column.values[index] = convert(value, found)
        except Invalid as invalid:
            column.values[index] = None
            column.problems[index] = f"{invalid.kind}:{key}"
            continue
        for quirk in found:
            column.quirks.setdefault(quirk, set()).add(index)
    return column
