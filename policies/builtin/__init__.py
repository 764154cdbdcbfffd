"""The built-in policies, one module each, named and configured as in the OTel Collector."""

from policies.builtin.always_sample import AlwaysSample
from policies.builtin.and_policy import And
from policies.builtin.latency import Latency
from policies.builtin.probabilistic import Probabilistic
from policies.builtin.status_code import StatusCode
from policies.builtin.string_attribute import StringAttribute

__all__ = ["AlwaysSample", "And", "Latency", "Probabilistic", "StatusCode", "StringAttribute"]
