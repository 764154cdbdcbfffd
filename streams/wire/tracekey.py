"""A trace is a tenant's trace ID: two tenants that send the same trace ID have two traces.

Buffer, decision cache and late spans are keyed by the *trace key*: the 16-byte trace ID, one
byte of tenant-name length, then the tenant name (UTF-8). The length byte makes every key a
unique prefix of the keys of its fragments (streams.pipeline.buffer), and caps tenant names at
255 bytes: a longer name is refused where the tenant is resolved, never cut (a cut name could
collide with another tenant's, or end inside a UTF-8 character).
"""

from __future__ import annotations

import functools

__all__ = [
    "TENANT_MAX_BYTES",
    "key_tenant",
    "key_trace_id",
    "parse_key",
    "tenant_problem",
    "trace_key",
]

TENANT_MAX_BYTES = 255
_TRACE_ID_BYTES = 16


@functools.lru_cache(maxsize=4096)
def tenant_problem(tenant: str) -> str | None:
    """Why `tenant` cannot name a tenant, or None if it can."""
    size = len(tenant.encode("utf-8", "surrogatepass"))
    if size == 0:
        return "the tenant name is empty"
    if size > TENANT_MAX_BYTES:
        return f"the tenant name is {size} bytes (at most {TENANT_MAX_BYTES})"
    if not tenant.isprintable():
        return "the tenant name holds control characters or bytes that are not UTF-8"
    return None


def trace_key(trace_id: bytes, tenant: str) -> bytes:
    """The key of `tenant`'s trace `trace_id` (the tenant was checked by `tenant_problem`)."""
    name = tenant.encode()
    return trace_id + bytes((len(name),)) + name


def key_trace_id(key: bytes) -> bytes:
    """The trace ID of a trace key."""
    return key[:_TRACE_ID_BYTES]


def key_tenant(key: bytes) -> str:
    """The tenant of a trace key."""
    return key[_TRACE_ID_BYTES + 1 :].decode("utf-8", "replace")


def parse_key(key: bytes) -> tuple[bytes, bytes] | None:
    """(trace key, rest) of a stored key that starts with a trace key, None if it does not."""
    if len(key) <= _TRACE_ID_BYTES:
        return None
    end = _TRACE_ID_BYTES + 1 + key[_TRACE_ID_BYTES]
    if len(key) < end:
        return None
    return key[:end], key[end:]
