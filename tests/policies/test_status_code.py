"""status_code: keep traces with a span in one of the given statuses."""

from __future__ import annotations

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.status_code import StatusCode, StatusCodeConfig
from tests.policies.traces import ERROR, OK, make_span, view


def status_policy(*codes: str) -> StatusCode:
    return StatusCode("status", StatusCodeConfig.model_validate({"status_codes": list(codes)}))


@pytest.mark.parametrize(
    ("wanted", "statuses", "verdict"),
    [
        (["ERROR"], [0, 0, ERROR], Verdict.SAMPLED),
        (["ERROR"], [0, OK], Verdict.NOT_SAMPLED),
        (["OK"], [0, OK], Verdict.SAMPLED),
        (["UNSET"], [0], Verdict.SAMPLED),
        (["UNSET"], [OK, ERROR], Verdict.NOT_SAMPLED),
        (["ERROR", "OK"], [OK], Verdict.SAMPLED),
    ],
)
def test_samples_when_any_span_has_a_wanted_status(
    wanted: list[str], statuses: list[int], verdict: Verdict
) -> None:
    trace = view(*(make_span(status=code) for code in statuses))
    assert status_policy(*wanted).evaluate(trace, 0.0) is verdict


def test_trace_without_spans_is_not_sampled() -> None:
    empty = TraceView.from_resource_spans(b"", [])
    assert status_policy("UNSET").evaluate(empty, 0.0) is Verdict.NOT_SAMPLED


@pytest.mark.parametrize("codes", [[], ["FAIL"], "ERROR"])
def test_rejects_empty_or_unknown_codes(codes: object) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "s", "type": "status_code", "status_codes": codes}])
    assert all(loc[:2] == (0, "status_codes") for loc, _ in caught.value.errors)
