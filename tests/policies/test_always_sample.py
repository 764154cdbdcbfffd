"""always_sample keeps everything."""

from __future__ import annotations

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.always_sample import AlwaysSample, AlwaysSampleConfig
from tests.policies.traces import make_span, view


def test_samples_any_trace_even_empty() -> None:
    policy = AlwaysSample("all", AlwaysSampleConfig())
    assert policy.evaluate(view(make_span()), 0.0) is Verdict.SAMPLED
    assert policy.evaluate(TraceView.from_resource_spans(b"", []), 0.0) is Verdict.SAMPLED
    assert policy.probability() == 1.0


def test_takes_no_fields() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "all", "type": "always_sample", "threshold_ms": 1}])
    assert caught.value.errors == [((0, "threshold_ms"), "Extra inputs are not permitted")]
