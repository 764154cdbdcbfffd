"""The built-in policies, one module each, named and configured as in the OTel Collector."""

from policies.builtin.always_sample import AlwaysSample
from policies.builtin.and_policy import And
from policies.builtin.boolean_attribute import BooleanAttribute
from policies.builtin.bytes_limiting import BytesLimiting
from policies.builtin.composite import Composite
from policies.builtin.drop import Drop
from policies.builtin.latency import Latency
from policies.builtin.numeric_attribute import NumericAttribute
from policies.builtin.probabilistic import Probabilistic
from policies.builtin.rate_limiting import RateLimiting
from policies.builtin.span_count import SpanCount
from policies.builtin.status_code import StatusCode
from policies.builtin.string_attribute import StringAttribute
from policies.builtin.trace_state import TraceState

__all__ = [
    "AlwaysSample",
    "And",
    "BooleanAttribute",
    "BytesLimiting",
    "Composite",
    "Drop",
    "Latency",
    "NumericAttribute",
    "Probabilistic",
    "RateLimiting",
    "SpanCount",
    "StatusCode",
    "StringAttribute",
    "TraceState",
]
