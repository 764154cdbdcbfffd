"""Caudal's policy engine: pure sampling rules over a read-only view of one trace.

Build an engine once from the ``policies:`` configuration with :func:`build_engine`, then
call :meth:`PolicyEngine.decide` with a :class:`TraceView` and the decision time. Nothing
here touches Kafka, clocks or global state; ``streams`` does the I/O around it. The policy
types, their semantics and the plugin API are described in ``policies/README.md``.
"""

from policies.engine import (
    PolicyConfigError,
    PolicyEngine,
    PolicySettings,
    SubPolicy,
    build_engine,
    build_sub_policies,
)
from policies.model import Chance, Decision, Match, NoFields, Policy, StatelessPolicy, Verdict
from policies.registry import ENTRY_POINT_GROUP, installed_policies, load_policy_class
from policies.trace import TraceView, any_value_to_python

__all__ = [
    "ENTRY_POINT_GROUP",
    "Chance",
    "Decision",
    "Match",
    "NoFields",
    "Policy",
    "PolicyConfigError",
    "PolicyEngine",
    "PolicySettings",
    "StatelessPolicy",
    "SubPolicy",
    "TraceView",
    "Verdict",
    "any_value_to_python",
    "build_engine",
    "build_sub_policies",
    "installed_policies",
    "load_policy_class",
]
