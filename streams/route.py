"""Routing: which tenant a trace belongs to, and the record that carries a kept trace onward."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

__all__ = ["TenantResolver"]


class TenantResolver:
    """Resolve a tenant from `tenant_from` sources, in order; the first present wins.

    Sources are `header:NAME` (a Kafka header of the input message, set by the ingest gateway)
    and `resource:ATTRIBUTE` (a string resource attribute such as `tenant.id`).
    """

    def __init__(self, sources: Sequence[str], default: str) -> None:
        self.default = default
        self._order = [tuple(s.split(":", 1)) for s in sources]

    def from_headers(self, headers: dict[str, bytes]) -> str | None:
        """The tenant named by the message's headers, if a header source is configured."""
        for kind, name in self._order:
            if kind == "header":
                value = headers.get(name)
                if value:
                    return value.decode("utf-8", "replace")
        return None

    def resolve(self, header_tenant: str | None, blocks: Sequence[ResourceSpans]) -> str:
        """Tenant of a trace given its message's header tenant and its resource blocks."""
        for kind, name in self._order:
            if kind == "header":
                if header_tenant:
                    return header_tenant
                continue
            for rs in blocks:
                for kv in rs.resource.attributes:
                    if kv.key == name and kv.value.string_value:
                        return str(kv.value.string_value)
        return self.default
