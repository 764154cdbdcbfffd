"""The configuration table is the models' own, and every key in it says what it does."""

from __future__ import annotations

from streams.config import Settings, applies_on_reload
from streams.config.reference import config_rows


def test_every_key_has_a_meaning_and_every_section_a_row() -> None:
    rows = list(config_rows())
    assert [path for path, _, _, meaning in rows if not meaning] == []
    sections = {path.split(".")[0] for path, *_ in rows}
    assert sections == set(Settings.model_fields)


def test_reload_column_follows_the_models() -> None:
    rows = {path: applies for path, _, applies, _ in config_rows()}
    assert rows["tenants.NAME.quota_spans_per_second"] is True
    assert rows["redaction.rules"] is True
    assert rows["tenants.NAME.exporters"] is False
    assert rows["decision.wait"] is False
    for path, applies in rows.items():
        assert applies_on_reload(path.replace("NAME", "acme")) == applies, path


def test_defaults_are_spelled_as_a_user_writes_them() -> None:
    rows = {path: default for path, default, _, _ in config_rows()}
    assert rows["decision.wait"] == "`10s`"
    assert rows["decision.tick"] == "`250ms`"
    assert rows["kafka.max_message_bytes"] == "`1MiB`"
    assert rows["exporters.NAME.type"] == "required"
    assert rows["tenants.NAME.quota_spans_per_second"] == "none"
