"""PII redaction of kept traces, applied once per trace before it is written to caudal-sampled.

Rules act on attribute keys (exact or regex): `delete` the attribute, `hash` its value (salted
SHA-256, so equal values still group together), or `mask` it. Value rules replace regex matches
inside every string value (e-mail addresses, card numbers). Resource, span, event and link
attributes are all covered, so nothing redacted ever reaches Kafka or a backend.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import MutableSequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from streams.config import RedactionConfig

__all__ = ["MASK", "Redactor"]

MASK = "****"


class Redactor:
    """Apply one redaction configuration to OTLP requests, in place."""

    def __init__(self, config: RedactionConfig) -> None:
        self.exact = {rule.key: rule.action for rule in config.rules if rule.key is not None}
        self.patterns = [
            (re.compile(rule.key_regex), rule.action)
            for rule in config.rules
            if rule.key_regex is not None
        ]
        self.values = [(re.compile(rule.pattern), rule.replacement) for rule in config.values]
        self.salt = config.hash_salt.encode()
        self.active = bool(self.exact or self.patterns or self.values)
        self._actions: dict[str, str | None] = {}

    def apply(self, request: ExportTraceServiceRequest) -> None:
        """Redact every attribute list of the request."""
        if not self.active:
            return
        for rs in request.resource_spans:
            self._redact(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self._redact(span.attributes)
                    for event in span.events:
                        self._redact(event.attributes)
                    for link in span.links:
                        self._redact(link.attributes)

    def _action(self, key: str) -> str | None:
        action = self._actions.get(key, "")
        if action == "":
            action = self.exact.get(key)
            if action is None:
                action = next((a for pattern, a in self.patterns if pattern.search(key)), None)
            self._actions[key] = action
        return action

    def _redact(self, attributes: MutableSequence[KeyValue]) -> None:
        if not attributes:
            return
        keep = []
        changed = False
        for kv in attributes:
            action = self._action(kv.key)
            if action == "delete":
                changed = True
                continue
            if action == "hash":
                digest = hashlib.sha256(self.salt + _as_text(kv.value).encode()).hexdigest()
                kv.value.CopyFrom(AnyValue(string_value=digest))
            elif action == "mask":
                kv.value.CopyFrom(AnyValue(string_value=MASK))
            elif self.values:
                self._replace_values(kv.value)
            keep.append(kv)
        if changed:
            kept = [KeyValue(key=kv.key, value=kv.value) for kv in keep]
            del attributes[:]
            attributes.extend(kept)

    def _replace_values(self, value: AnyValue) -> None:
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            for pattern, replacement in self.values:
                text = pattern.sub(replacement, text)
            value.string_value = text
        elif kind == "array_value":
            for item in value.array_value.values:
                self._replace_values(item)
        elif kind == "kvlist_value":
            for kv in value.kvlist_value.values:
                self._replace_values(kv.value)


def _as_text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))
