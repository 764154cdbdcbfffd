"""OpenTelemetry's probability-sampling threshold in the W3C ``tracestate`` (``ot=th:<hex>``).

A span kept with probability p carries the rejection threshold T = (1 − p) × 2^56 as up to 14
hex digits, trailing zeros dropped (``th:0`` is 100 %, ``th:8`` 50 %, ``th:c`` 25 %), so a
backend can weight what it counts by 1/p. Caudal writes it on every kept span:

- the tail keep is composed with a threshold the span already carries (a head sampler's): the
  two draws are independent (Caudal hashes the trace ID with the policy name; consistent head
  samplers compare the trace's randomness), so the probabilities multiply;
- where the probability is not known (a rate or byte limit kept the trace), the ``th`` sub-key
  is erased, as the specification asks of a sampler that cannot state one.

The threshold is rounded to `PRECISION` significant hex digits, as the Collector's
probabilistic sampler does by default.
"""

from __future__ import annotations

import functools
from typing import Final

__all__ = ["PRECISION", "compose", "probability_of", "threshold_hex"]

PRECISION: Final = 4
_DIGITS: Final = 14  # 56 bits
_MAX: Final = 1 << 56


def threshold_hex(probability: float, precision: int = PRECISION) -> str:
    """The ``th`` value for `probability` in [2^-56, 1], rounded to `precision` hex digits
    (1-14; leading zeros do not count) and without trailing zeros. Where that many digits
    would misstate the probability by more than 0.5 % (probabilities far under 1 %), more
    digits are given. Raises ValueError outside that range."""
    if not 0 < probability <= 1:
        raise ValueError(f"probability {probability!r} is not in (0, 1]")
    exact = _MAX - round(probability * _MAX)  # (1 - p) × 2^56, without losing small p
    if not 0 <= exact < _MAX:
        raise ValueError(f"probability {probability!r} is below 2^-56")
    significant = len(f"{exact:x}".lstrip("0")) if exact else 0
    for digits in range(max(1, precision), _DIGITS + 1):
        drop = max(0, significant - digits)
        unit = 16**drop
        threshold = (exact + unit // 2) // unit * unit
        if threshold >= _MAX:
            threshold = exact // unit * unit
        implied = (_MAX - threshold) / _MAX
        if abs(implied - probability) <= probability * 0.005:
            break
    return f"{threshold:014x}".rstrip("0") or "0"


def probability_of(th: str) -> float | None:
    """The probability a ``th`` value stands for; None if it is not 1-14 hex digits."""
    if not 1 <= len(th) <= _DIGITS or any(c not in "0123456789abcdef" for c in th):
        return None
    return (_MAX - int(th.ljust(_DIGITS, "0"), 16)) / _MAX


@functools.lru_cache(maxsize=4096)
def compose(tracestate: str, probability: float | None) -> str:
    """`tracestate` with its ``ot`` member's ``th`` set for a keep of `probability` (times
    the probability an existing ``th`` stands for), or erased when `probability` is None. The
    ``ot`` member moves first, as W3C asks of a modified member; other members and other
    ``ot`` sub-keys stay as they were."""
    members = [m.strip() for m in tracestate.split(",") if m.strip()] if tracestate else []
    ot_fields: list[str] = []
    rest: list[str] = []
    for member in members:
        if member.startswith("ot=") and not ot_fields:
            ot_fields = [f for f in member[3:].split(";") if f]
        else:
            rest.append(member)
    previous = next((f[3:] for f in ot_fields if f.startswith("th:")), None)
    ot_fields = [f for f in ot_fields if not f.startswith("th:")]
    if probability is not None:
        head = probability_of(previous) if previous is not None else 1.0
        if head is not None:  # a malformed th is dropped, not composed
            combined = max(probability * head, 1 / _MAX)
            ot_fields.insert(0, f"th:{threshold_hex(combined)}")
    out = ([f"ot={';'.join(ot_fields)}"] if ot_fields else []) + rest
    return ",".join(out)
