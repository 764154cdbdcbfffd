"""span_count: the number of spans within [min_spans, max_spans], max 0 meaning unbounded."""

from __future__ import annotations

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.span_count import SpanCount, SpanCountConfig
from tests.policies.traces import batch, make_span, view

S, N = Verdict.SAMPLED, Verdict.NOT_SAMPLED


def span_count(min_spans: int = 0, max_spans: int = 0) -> SpanCount:
    return SpanCount("spans", SpanCountConfig(min_spans=min_spans, max_spans=max_spans))


def spans(n: int) -> TraceView:
    # Spread over two resources and two scopes: every span counts.
    first = batch([make_span() for _ in range(n // 2)], scopes=2)
    second = batch([make_span() for _ in range(n - n // 2)], resource={"service.name": "b"})
    return view(first, second)


@pytest.mark.parametrize(
    ("bounds", "count", "verdict"),
    [
        ((2, 0), 1, N),
        ((2, 0), 2, S),  # inclusive lower bound
        ((2, 0), 5000, S),  # max 0: no upper bound
        ((2, 5), 5, S),  # inclusive upper bound
        ((2, 5), 6, N),
        ((5, 3), 4, N),  # an empty range keeps nothing
        ((0, 0), 0, S),  # the defaults keep everything, an empty trace too
        ((1, 0), 0, N),
    ],
)
def test_bounds(bounds: tuple[int, int], count: int, verdict: Verdict) -> None:
    assert span_count(*bounds).evaluate(spans(count), 0.0) is verdict


def test_empty_view() -> None:
    assert span_count(1).evaluate(TraceView.from_resource_spans(b"", []), 0.0) is N


@pytest.mark.parametrize("fields", [{"min_spans": 2**31}, {"max_spans": "lots"}])
def test_config_errors(fields: dict[str, object]) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "s", "type": "span_count", "span_count": fields}])
    assert [loc[:2] for loc, _ in caught.value.errors] == [(0, "span_count")]
