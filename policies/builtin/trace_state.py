"""``trace_state``: keep traces with a span whose W3C tracestate has ``key=value``."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from policies.model import StatelessPolicy, Verdict
from policies.trace import TraceView

__all__ = ["TraceState", "TraceStateConfig", "tracestate_value"]

_MAX_MEMBERS = 32
# W3C trace-context-1: value = 0*255(chr) nblk-chr, chr = %x20-2B / %x2D-3C / %x3E-7E.
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_KEY_SYMBOLS = frozenset("_-*/")


class TraceStateConfig(BaseModel):
    """Fields of ``trace_state``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    """The tracestate list-member key, e.g. ``vendor`` or ``tenant@vendor``."""
    values: list[str]
    """Values that match. Empty ones, and ones making ``key=value`` longer than 256
    characters, never match (the Collector drops them)."""


class TraceState(StatelessPolicy):
    """SAMPLED if a span's tracestate holds ``key`` with one of ``values`` (exact match).

    As ``trace_state_filter.go``: each span's tracestate is parsed like OpenTelemetry Go's
    ``trace.ParseTraceState`` (at most 32 members, no duplicate keys, W3C key and value
    grammar, blanks trimmed around members); a span whose tracestate is invalid does not match.
    """

    Config = TraceStateConfig

    def __init__(self, name: str, config: TraceStateConfig) -> None:
        super().__init__(name, config)
        self._key = config.key
        key_size = len(config.key.encode())
        self._values = frozenset(v for v in config.values if v and key_size + len(v.encode()) < 256)
        self._needle = f"{config.key}="

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Parse the non-empty tracestates (those mentioning the key) and look the key up."""
        for state in trace.trace_states:
            if self._needle in state and tracestate_value(state, self._key) in self._values:
                return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED


def tracestate_value(tracestate: str, key: str) -> str | None:
    """The value of ``key`` in a W3C tracestate; ``""`` if absent, ``None`` if invalid."""
    found: dict[str, str] = {}
    for member in tracestate.split(","):
        if not member:
            continue
        name, equals, value = member.partition("=")
        name, value = name.lstrip(" \t"), value.rstrip(" \t")
        if not equals or not _valid_key(name) or not _VALUE.fullmatch(value):
            return None
        if name in found or len(found) == _MAX_MEMBERS:
            return None
        found[name] = value
    return found.get(key, "")


def _valid_key(key: str) -> bool:
    # simple-key = lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/"); multi-tenant-key =
    # tenant-id "@" system-id. Lengths in bytes, characters as Go's checkKeyRemain reads
    # them: letters and digits by the low byte of the code point, symbols exactly.
    tenant, at, system = key.partition("@")
    if not at:
        return _key_part(key, 255, first_digit=False)
    return _key_part(tenant, 240, first_digit=True) and _key_part(system, 13, first_digit=False)


def _key_part(part: str, rest_limit: int, *, first_digit: bool) -> bool:
    if not part or len(part.encode()) - 1 > rest_limit:
        return False
    first = part[0]
    if not ("a" <= first <= "z" or (first_digit and "0" <= first <= "9")):
        return False
    return all(c in _KEY_SYMBOLS or chr(ord(c) & 0xFF) in _ALNUM for c in part[1:])
