"""Decisions per second for the product's five default rules on 10-span traces.

Run from the repository root: ``python -m tests.policies.bench_decide``. The timed loop builds
the TraceView from parsed protobuf (parsing itself excluded) and calls decide().
"""

from __future__ import annotations

import random
import time

from policies import TraceView, build_engine
from tests.policies.traces import shop_trace

DEFAULT_RULES = [
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "slow", "type": "latency", "latency": {"threshold_ms": 2000}},
    {
        "name": "critical-services",
        "type": "string_attribute",
        "string_attribute": {"key": "service.name", "values": ["payments", "auth"]},
    },
    {
        "name": "vip-users",
        "type": "string_attribute",
        "sample_percentage": 50,
        "string_attribute": {"key": "user.tier", "values": ["vip"]},
    },
    {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}},
]


def main(count: int = 20_000, rounds: int = 5) -> None:
    """Print the best of ``rounds`` timings over ``count`` distinct traces."""
    rng = random.Random(7)
    traces = []
    for _ in range(count):
        trace_id = rng.randbytes(16)
        roll = rng.random()
        rs = shop_trace(
            trace_id,
            error=roll < 0.02,
            slow=0.02 <= roll < 0.05,
            tier="vip" if roll > 0.95 else "free",
        )
        traces.append((trace_id, [rs]))
    engine = build_engine(DEFAULT_RULES)
    best = float("inf")
    kept = 0
    for _ in range(rounds):
        # Fresh protobuf objects each round so no wrapper or view is reused across rounds.
        batches = [(tid, [type(rs[0]).FromString(rs[0].SerializeToString())]) for tid, rs in traces]
        start = time.perf_counter()
        kept = 0
        for trace_id, resource_spans in batches:
            kept += engine.decide(TraceView.from_resource_spans(trace_id, resource_spans), 0.0).kept
        best = min(best, time.perf_counter() - start)
    rate = count / best
    print(f"{rate:,.0f} decisions/s ({1e6 / rate:.2f} µs each), kept {kept / count:.1%}")


if __name__ == "__main__":
    main()
