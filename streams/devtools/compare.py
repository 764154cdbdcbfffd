"""`caudal decide --from-topic`: a candidate configuration and the current one, side by side,
on the traffic the input topic still holds. Nothing is exported.

Each trace that started in the range (read back as `caudal backfill` reads it,
`streams.devtools.replay`) is decided by both configurations' policies, at the time the
pipeline decided it (its first record plus `decision.wait`). Per tenant and per deciding
policy: traces and spans kept, the share kept, the bytes per second that would be exported,
and the traces whose decision changes. Quotas are not applied (they depend on the traffic of
the moment), and rate limits and adaptive samplers start afresh, as in a backfill.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from policies import Decision
from streams.config import Settings
from streams.devtools.replay import Replay, ReplayedTrace, progress_line
from streams.pipeline.decide import PolicySets
from streams.wire.records import partition_for

__all__ = ["Comparison", "compare_from_topic"]


@dataclass
class Side:
    """What one configuration keeps of a tenant's traces."""

    traces: int = 0
    spans: int = 0
    bytes: int = 0
    by_policy: Counter[str] = field(default_factory=Counter)
    spans_by_policy: Counter[str] = field(default_factory=Counter)

    def add(self, decision: Decision, trace: ReplayedTrace) -> None:
        if not decision.kept:
            return
        policy = decision.policy or "none"
        self.traces += 1
        self.spans += trace.spans
        self.bytes += trace.size
        self.by_policy[policy] += 1
        self.spans_by_policy[policy] += trace.spans

    def as_dict(self, total: int, seconds: float) -> dict[str, Any]:
        return {
            "kept_traces": self.traces,
            "kept_spans": self.spans,
            "share_kept": round(self.traces / total, 4) if total else 0.0,
            "bytes_per_second": round(self.bytes / seconds, 1),
            "by_policy": {
                name: {"traces": count, "spans": self.spans_by_policy[name]}
                for name, count in self.by_policy.most_common()
            },
        }


@dataclass
class TenantComparison:
    """One tenant's figures under both configurations."""

    traces: int = 0
    spans: int = 0
    current: Side = field(default_factory=Side)
    candidate: Side = field(default_factory=Side)
    newly_kept: list[bytes] = field(default_factory=list)
    newly_dropped: list[bytes] = field(default_factory=list)
    newly_kept_count: int = 0
    newly_dropped_count: int = 0
    other_policy: int = 0  # kept by both, by another policy


@dataclass
class Comparison:
    """The whole comparison."""

    since: float
    until: float
    sample: int
    tenants: dict[str, TenantComparison] = field(default_factory=dict)

    def add(self, trace: ReplayedTrace, current: Decision, candidate: Decision) -> None:
        tenant = self.tenants.setdefault(trace.tenant, TenantComparison())
        tenant.traces += 1
        tenant.spans += trace.spans
        tenant.current.add(current, trace)
        tenant.candidate.add(candidate, trace)
        if candidate.kept and not current.kept:
            tenant.newly_kept_count += 1
            if len(tenant.newly_kept) < self.sample:
                tenant.newly_kept.append(trace.trace_id)
        elif current.kept and not candidate.kept:
            tenant.newly_dropped_count += 1
            if len(tenant.newly_dropped) < self.sample:
                tenant.newly_dropped.append(trace.trace_id)
        elif current.kept and current.policy != candidate.policy:
            tenant.other_policy += 1

    def as_dict(self) -> dict[str, Any]:
        seconds = self.until - self.since
        return {
            "since": self.since,
            "until": self.until,
            "tenants": {
                name: {
                    "traces": t.traces,
                    "spans": t.spans,
                    "current": t.current.as_dict(t.traces, seconds),
                    "candidate": t.candidate.as_dict(t.traces, seconds),
                    "changed": {
                        "newly_kept": t.newly_kept_count,
                        "newly_dropped": t.newly_dropped_count,
                        "kept_by_another_policy": t.other_policy,
                        "newly_kept_sample": [tid.hex() for tid in t.newly_kept],
                        "newly_dropped_sample": [tid.hex() for tid in t.newly_dropped],
                    },
                }
                for name, t in sorted(self.tenants.items())
            },
        }

    def text(self) -> str:
        seconds = self.until - self.since
        lines = [f"{seconds:g} s of retained traffic; current -> candidate"]
        for name, t in sorted(self.tenants.items()):
            cur, cand = t.current, t.candidate
            lines.append(f"tenant {name}: {t.traces:,} traces, {t.spans:,} spans")
            lines.append(
                f"  kept traces {cur.traces:,} -> {cand.traces:,}"
                f" ({_share(cur.traces, t.traces)} -> {_share(cand.traces, t.traces)}),"
                f" spans {cur.spans:,} -> {cand.spans:,},"
                f" export {cur.bytes / seconds:,.0f} -> {cand.bytes / seconds:,.0f} B/s"
            )
            for policy in sorted(set(cur.by_policy) | set(cand.by_policy)):
                lines.append(
                    f"    {policy}: traces {cur.by_policy[policy]:,} -> "
                    f"{cand.by_policy[policy]:,}, spans {cur.spans_by_policy[policy]:,} -> "
                    f"{cand.spans_by_policy[policy]:,}"
                )
            lines.append(
                f"  changed: {t.newly_kept_count:,} newly kept, {t.newly_dropped_count:,} newly "
                f"dropped, {t.other_policy:,} kept by another policy"
            )
            if t.newly_kept:
                lines.append("    newly kept, e.g. " + " ".join(x.hex() for x in t.newly_kept))
            if t.newly_dropped:
                lines.append(
                    "    newly dropped, e.g. " + " ".join(x.hex() for x in t.newly_dropped)
                )
        return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def compare_from_topic(
    candidate: Settings,
    current: Settings,
    since: float,
    until: float,
    sample: int = 10,
    tenant: str | None = None,
    progress: IO[str] | None = None,
    max_traces: int = 100_000,
) -> Comparison:
    """Decide the range's traces with both configurations (the candidate's Kafka section says
    where to read)."""
    replay = Replay(
        candidate,
        since,
        until,
        max_traces=max_traces,
        progress=None if progress is None else progress_line("decide", progress),
    )
    policies = {"current": PolicySets.from_settings(current)}
    policies["candidate"] = PolicySets.from_settings(candidate)
    comparison = Comparison(since, until, sample)
    wait = candidate.decision.wait
    for trace in replay.traces():
        if tenant is not None and trace.tenant != tenant:
            continue
        view = trace.view()
        if not since <= view.start_unix_nano / 1e9 < until:
            continue
        view.partition = partition_for(trace.trace_id, candidate.kafka.partitions)
        now = trace.first_seen + wait
        before = policies["current"].for_tenant(trace.tenant).decide(view, now)
        after = policies["candidate"].for_tenant(trace.tenant).decide(view, now)
        comparison.add(trace, before, after)
    if progress is not None:
        progress.write("\n")
    return comparison


def write_comparison(comparison: Comparison, as_json: bool, out: IO[str] = sys.stdout) -> None:
    """Print the comparison (`--json`: one JSON object)."""
    out.write((json.dumps(comparison.as_dict()) if as_json else comparison.text()) + "\n")
