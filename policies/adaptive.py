"""What the adaptive samplers share: the sampler key, the deterministic keep, Refinery's
log10 allocation and the exponential moving average of counts per key.

The samplers (``ema_dynamic``, ``ema_throughput``, ``windowed_throughput``) follow the ideas of
Honeycomb's dynsampler-go, with three differences an operator can count on:

- **Deterministic keep.** A trace is kept at rate R (probability 1/R) when the FNV-1a hash of
  the trace ID, salted with the policy name, is at most MaxUint64 / R: the ``probabilistic``
  policy's hash. Every worker and every restart keeps the same traces for the same rate.
- **Time from the decisions.** Intervals advance with the decision time the engine passes in,
  not with a timer thread, so a replay decides as the live run did.
- **Non-integer rates.** A key's rate is its count over its goal, not rounded up, so the
  throughput samplers reach their goal instead of staying below it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.hashing import fnv1a_64, ratio_threshold
from policies.model import Chance, Match, Policy, Verdict
from policies.trace import TraceView

__all__ = [
    "EmaCounts",
    "EmaFields",
    "KeyFields",
    "EmaSampler",
    "PartitionedSampler",
    "RateTable",
    "log_allocation",
    "same_key",
    "sampler_key",
]

KEY_SEPARATOR: Final = "•"
"""Between the values of two key fields (``,`` joins the values of one field)."""


class KeyFields(BaseModel):
    """How a trace's sampler key is built (every adaptive sampler has these fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_fields: list[str] = Field(default_factory=list)
    """Attribute keys (resource or span attributes, on any span) whose values make the key."""
    use_trace_length: bool = False
    """Add the trace's span count to the key."""
    max_keys: int = Field(default=500, ge=1)
    """Keys tracked at most; traces of further keys are not counted and keep
    ``initial_sample_rate`` (or rate 1) until a tracked key ages out."""

    @model_validator(mode="after")
    def _some_key(self) -> KeyFields:
        if not self.key_fields and not self.use_trace_length:
            raise ValueError("give key_fields, use_trace_length or both")
        if any(not field for field in self.key_fields):
            raise ValueError("key_fields holds an empty attribute key")
        return self


class EmaFields(KeyFields):
    """The moving-average fields of ``ema_dynamic`` and ``ema_throughput``."""

    adjustment_interval: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    """Seconds between two updates of the averages and rates."""
    weight: float = Field(default=0.5, gt=0, lt=1)
    """Weight of the newest interval in the moving average."""
    age_out_value: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """A key whose average falls below this is forgotten (default: ``weight``)."""
    burst_multiple: float = Field(default=2.0, allow_inf_nan=False)
    """Update early when an interval's count reaches this multiple of the averages' sum
    (negative: never)."""
    burst_detection_delay: int = Field(default=3, ge=0)
    """Intervals after the start before bursts are detected."""


def same_key(config: KeyFields, other: KeyFields) -> bool:
    """Whether two sampler configurations build the same key (then learned rates carry over)."""
    return (config.key_fields, config.use_trace_length) == (
        other.key_fields,
        other.use_trace_length,
    )


def sampler_key(trace: TraceView, fields: Sequence[str], use_trace_length: bool) -> str:
    """The trace's key: per field its distinct values, sorted and joined by ``,``; fields
    joined by ``•``; then the span count if asked. A field no span has gives an empty part."""
    parts = []
    for field in fields:
        values = {_text(value) for value in trace.attribute_values(field)}
        parts.append(",".join(sorted(values)))
    if use_trace_length:
        parts.append(str(trace.span_count))
    return KEY_SEPARATOR.join(parts)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def log_allocation(goal_count: float, counts: Mapping[str, float]) -> dict[str, float]:
    """Sample rates (>= 1) per key that keep about `goal_count` of the `counts` in all.

    Each key's goal is its log10 share of `goal_count`, at least one: rare keys keep nearly
    everything, common ones are sampled harder. A key whose count is below its goal keeps all
    and hands what is left to the keys after it (sorted order, so the result is the same on
    every worker). Keys with a count of at most 1 all get rate 1.
    """
    if not counts:
        return {}
    log_sum = sum(math.log10(max(1.0, count)) for count in counts.values())
    if log_sum <= 0:
        return dict.fromkeys(counts, 1.0)  # every key seen at most once: keep them all
    ratio = goal_count / log_sum
    rates: dict[str, float] = {}
    remaining = len(counts)
    extra = 0.0
    for key in sorted(counts):
        count = max(1.0, counts[key])
        goal = max(1.0, math.log10(count) * ratio)
        share = extra / remaining
        goal += share
        extra -= share
        remaining -= 1
        if count <= goal:
            rates[key] = 1.0
            extra += goal - count
        else:
            rates[key] = count / goal
    return rates


class RateTable:
    """Sample rates per key, turned into deterministic keeps (see the module docstring)."""

    __slots__ = ("seed", "_default", "_thresholds")

    def __init__(self, name: str, default_rate: float) -> None:
        self.seed: Final = fnv1a_64(name.encode())
        self._default = _entry(default_rate)  # for a key without a rate of its own
        self._thresholds: dict[str, tuple[float, int]] = {}  # key -> (rate, hash threshold)

    @property
    def default_rate(self) -> float:
        """The rate of a key the table does not hold."""
        return self._default[0]

    @default_rate.setter
    def default_rate(self, rate: float) -> None:
        self._default = _entry(rate)

    def dump(self) -> dict[str, Any]:
        """The rates and the default rate (JSON-ready)."""
        return {"rates": self.rates(), "default": self.default_rate}

    def load(self, doc: Mapping[str, Any]) -> None:
        """Use the rates of a `dump`."""
        self.default_rate = float(doc["default"])
        self.set_rates({str(k): float(v) for k, v in doc["rates"].items()})

    def set_rates(self, rates: Mapping[str, float]) -> None:
        """Replace the table (rates >= 1)."""
        self._thresholds = {key: _entry(rate) for key, rate in rates.items()}

    def rates(self) -> dict[str, float]:
        """The current rate of every key in the table."""
        return {key: rate for key, (rate, _) in self._thresholds.items()}

    def chance(self, key: str) -> Chance:
        """A trace of `key` is kept with probability 1 / the key's rate."""
        return Chance(1 / self._thresholds.get(key, self._default)[0], frozenset({self.seed}))

    def decide(self, key: str, trace_id: bytes) -> tuple[Verdict, Match | None]:
        """SAMPLED with probability 1 / the key's rate, by the trace ID's hash."""
        rate, threshold = self._thresholds.get(key, self._default)
        if fnv1a_64(trace_id, self.seed) <= threshold:
            return Verdict.SAMPLED, Match(None, 1 / rate)
        return Verdict.NOT_SAMPLED, None


def _entry(rate: float) -> tuple[float, int]:
    return rate, ratio_threshold(1 / rate)


class EmaCounts:
    """Traces counted per key and folded into an exponential moving average every interval.

    `observe` counts a trace at decision time `now` and says whether the averages were just
    updated (the interval ended, or a burst came early); the sampler then recomputes its
    rates from :attr:`averages`. Counts are scaled to one interval's worth when an update
    comes late (no traffic for a while) or early (a burst).
    """

    def __init__(self, fields: EmaFields) -> None:
        self.fields = fields
        self.age_out = fields.age_out_value if fields.age_out_value is not None else fields.weight
        self.current: dict[str, float] = {}
        self.averages: dict[str, float] = {}
        self.started: float | None = None  # the interval's start
        # When `current` began to be counted here: the interval's start, or, for a state
        # continued from a stored one (a partition's new owner), the first trace counted
        # since; what the previous owner counted after its last update is not in `current`.
        self.counting_since: float | None = None
        self.intervals = 0
        self.burst_sum = 0.0
        self.burst_threshold = 0.0
        self.updated = False  # at least one update: the rates mean something

    def dump(self) -> dict[str, Any]:
        """What `load` needs to continue from here (JSON-ready)."""
        return {
            "current": self.current,
            "averages": self.averages,
            "started": self.started,
            "intervals": self.intervals,
            "burst_sum": self.burst_sum,
            "burst_threshold": self.burst_threshold,
            "updated": self.updated,
        }

    def load(self, doc: Mapping[str, Any]) -> None:
        """Continue from a `dump` (of this sampler, perhaps with other settings)."""
        # The averages and rates carry on; counting starts again here, with a whole interval
        # of its own (what the previous owner counted since its last update is not known, and
        # scaling a few seconds of counts to an interval would misread the traffic).
        self.current, self.counting_since, self.started = {}, None, None
        self.averages = {str(k): float(v) for k, v in doc["averages"].items()}
        self.intervals = int(doc["intervals"])
        self.burst_sum = 0.0
        self.burst_threshold = float(doc["burst_threshold"])
        self.updated = bool(doc["updated"])

    def observe(self, key: str, now: float) -> bool:
        """Count one trace of `key`; True when the averages were updated before counting it."""
        fields = self.fields
        if self.started is None:
            self.started = now
        if self.counting_since is None:
            self.counting_since = now
        changed = False
        counted = max(now - self.counting_since, 1e-3)
        if now - self.started >= fields.adjustment_interval:
            changed = self._update(counted)
            self.intervals += 1
            self.started = self.counting_since = now
        elif (
            0 < self.burst_threshold <= self.burst_sum
            and self.intervals >= fields.burst_detection_delay
        ):
            changed = self._update(counted)
            self.started = self.counting_since = now
        current = self.current
        if key in current or len(current) < fields.max_keys:
            current[key] = current.get(key, 0.0) + 1.0
            self.burst_sum += 1.0
        return changed

    def _update(self, counted: float) -> bool:
        # `counted`: the seconds `current` covers; its counts are scaled to one interval.
        counts, self.current, self.burst_sum = self.current, {}, 0.0
        if not counts:
            return False  # no traffic: keep the averages (no decay during an outage)
        scale = self.fields.adjustment_interval / counted
        weight, averages = self.fields.weight, self.averages
        for key in list(averages):
            average = averages[key] * (1 - weight) + counts.pop(key, 0.0) * scale * weight
            if average < self.age_out:
                del averages[key]
            else:
                averages[key] = average
        for key, count in counts.items():
            if len(averages) >= self.fields.max_keys:
                break
            # A new key starts at its count, not at weight × count as in dynsampler-go: an
            # average started from zero under-counts for several intervals, and the rates it
            # gives overshoot a throughput goal by half an interval's worth and more.
            average = count * scale
            if average >= self.age_out:
                averages[key] = average
        total = sum(max(1.0, average) for average in averages.values())
        multiple = self.fields.burst_multiple
        self.burst_threshold = total * multiple if multiple > 0 else 0.0
        self.updated = True
        return True


State = TypeVar("State")

_STATE_VERSION: Final = 1


class PartitionedSampler(Policy, Generic[State]):
    """An adaptive sampler whose learned state is kept per ``caudal-spans`` partition.

    A trace's partition (``TraceView.partition``) picks the state it counts in and is decided
    by, so the state can move with its partition: the worker stores each partition's state in
    the changelogged ``decisions`` table whenever it changes (`state`), and the partition's
    next owner, or this worker after a restart, continues from it (`restore`). A goal for the
    whole group is divided by the number of partitions (`set_partitions`), so each partition
    keeps its part wherever it lives. Subclasses give a fresh state, decide with one, and
    convert it to and from JSON.
    """

    key_config: KeyFields

    def __init__(self, name: str, config: KeyFields) -> None:
        super().__init__(name, config)
        self.key_config = config
        self._keys = tuple(config.key_fields)
        self._length = config.use_trace_length
        self.total = 1
        self.parts: dict[int, State] = {}
        self.dirty: set[int] = set()  # partitions whose state changed since `state` was read

    def _fresh(self) -> State:
        raise NotImplementedError

    def _dump(self, state: State) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, doc: Mapping[str, Any]) -> State:
        raise NotImplementedError

    def _table(self, state: State) -> RateTable:
        raise NotImplementedError

    def chance(self, trace: TraceView, now: float) -> Chance:
        """The rate of the trace's key in its partition, as last computed (nothing counted)."""
        state = self.parts.get(trace.partition)
        table = self._table(self._fresh() if state is None else state)
        return table.chance(sampler_key(trace, self._keys, self._length))

    def part(self, partition: int) -> State:
        """The state of `partition` (fresh the first time)."""
        state = self.parts.get(partition)
        if state is None:
            state = self.parts[partition] = self._fresh()
        return state

    def set_partitions(self, owned: frozenset[int], total: int) -> None:
        """Forget partitions this worker no longer owns; goals are shared by `total`."""
        self.total = max(1, total)
        for partition in set(self.parts) - owned:
            del self.parts[partition]
            self.dirty.discard(partition)

    def state(self, partition: int) -> bytes | None:
        """The state of `partition` to store, if it changed since last asked."""
        if partition not in self.dirty:
            return None
        self.dirty.discard(partition)
        state = self.parts.get(partition)
        if state is None:
            return None
        key = self.key_config
        doc = {"v": _STATE_VERSION, "key": [key.key_fields, key.use_trace_length]}
        return json.dumps(doc | self._dump(state), separators=(",", ":")).encode()

    def restore(self, partition: int, data: bytes) -> bool:
        """Continue `partition` from a stored `state`; False (and a fresh state) when it was
        stored for another key or cannot be read."""
        try:
            doc = json.loads(data)
            key = self.key_config
            if doc.get("v") != _STATE_VERSION or doc.get("key") != [
                key.key_fields,
                key.use_trace_length,
            ]:
                return False
            self.parts[partition] = self._load(doc)
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        return True

    def adopt(self, previous: Policy) -> bool | None:
        """Keep the learned state of the same sampler before a reload if its key is the same;
        else start fresh."""
        if not isinstance(previous, type(self)) or not same_key(
            self.key_config, previous.key_config
        ):
            return False
        self.total = previous.total
        for partition, state in previous.parts.items():
            self.parts[partition] = self._load(previous._dump(state))
        return True

    def may_veto(self) -> bool:
        """Never: SAMPLED or NOT_SAMPLED."""
        return False

    def keeps_state(self) -> bool:
        """Yes: counts and rates per key."""
        return True


class EmaSampler(PartitionedSampler[tuple[EmaCounts, RateTable]]):
    """``ema_dynamic`` and ``ema_throughput``: per partition, the moving averages of the keys'
    counts and the rates they give. Subclasses say how many traces an interval should keep
    (`goal_count`), the rate before the first update (`initial_rate`) and the rate of a key
    new after it (`new_key_rate`)."""

    fields: EmaFields

    def __init__(self, name: str, config: EmaFields) -> None:
        super().__init__(name, config)
        self.fields = config

    def goal_count(self, averages: Mapping[str, float]) -> float:
        """Traces one partition should keep per adjustment interval."""
        raise NotImplementedError

    def initial_rate(self) -> float:
        """The rate of every key before the first update."""
        raise NotImplementedError

    def new_key_rate(self) -> float:
        """The rate of a key without one after an update."""
        return 1.0

    def _fresh(self) -> tuple[EmaCounts, RateTable]:
        return EmaCounts(self.fields), RateTable(self.name, self.initial_rate())

    def _dump(self, state: tuple[EmaCounts, RateTable]) -> dict[str, Any]:
        counts, table = state
        return {"counts": counts.dump(), "table": table.dump()}

    def _table(self, state: tuple[EmaCounts, RateTable]) -> RateTable:
        return state[1]

    def _load(self, doc: Mapping[str, Any]) -> tuple[EmaCounts, RateTable]:
        counts, table = self._fresh()
        counts.load(doc["counts"])
        table.load(doc["table"])
        return counts, table

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """See :meth:`evaluate_match`."""
        return self.evaluate_match(trace, now)[0]

    def evaluate_match(self, trace: TraceView, now: float) -> tuple[Verdict, Match | None]:
        """Count the trace under its key, then keep it with the key's probability."""
        key = sampler_key(trace, self._keys, self._length)
        counts, table = self.part(trace.partition)
        if counts.observe(key, now):
            table.set_rates(log_allocation(self.goal_count(counts.averages), counts.averages))
            table.default_rate = self.new_key_rate()
            self.dirty.add(trace.partition)
        return table.decide(key, trace.trace_id)
