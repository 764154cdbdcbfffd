"""Durations (`10s`, `500ms`) and sizes (`512MiB`) as config values, and how to print them back."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

__all__ = ["ByteSize", "Duration", "format_duration", "format_size", "parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Turn `10s`, `500ms`, `5m`, `1h` (or a number of seconds) into seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"expected a duration such as '10s', '500ms' or '5m', got {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: 3600 -> `1h`, 0.25 -> `250ms`."""
    for unit in ("h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000, 3):g}ms"


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
}


def parse_size(value: object) -> int:
    """Turn `512MiB`, `2GiB`, `100MB` (or a number of bytes) into bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNIT_BYTES[match.group(2)])
    raise ValueError(f"expected a size such as '512MiB' or '2GiB', got {value!r}")


def format_size(size: int) -> str:
    """The largest binary unit that spells a size exactly: 1048576 -> `1MiB`."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _UNIT_BYTES[unit] == 0:
            return f"{size // _UNIT_BYTES[unit]}{unit}"
    return str(size)


ByteSize = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
