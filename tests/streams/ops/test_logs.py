"""Log lines: one per event, text or JSON, with time, level, component and extras."""

from __future__ import annotations

import json
import logging
import logging.config

from streams.config import LoggingConfig
from streams.ops.logs import JsonFormatter, TextFormatter, logging_dict_config


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("streams.pipeline.decide")
    rec = logger.makeRecord(
        "streams.pipeline.decide", logging.WARNING, __file__, 1, msg, args, None
    )
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_level_time_component_and_extras() -> None:
    line = JsonFormatter().format(
        record("degradation level changed from=%d to=%d", 1, 2, tenant="acme", partition=3)
    )
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning"
    assert doc["component"] == "decide"
    assert doc["message"] == "degradation level changed from=1 to=2"
    assert doc["tenant"] == "acme" and doc["partition"] == 3
    assert doc["time"].endswith("Z") and "T" in doc["time"]


def test_json_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: bad" in json.loads(line)["exception"]


def test_text_lines_are_key_value() -> None:
    line = TextFormatter().format(record("export failed exporter=%s", "otlp", tenant="acme"))
    assert line.split(" ", 3)[1:3] == ["WARNING", "decide"]
    assert line.endswith("export failed exporter=otlp tenant=acme")


def test_dict_config_selects_the_formatter_and_level() -> None:
    config = logging_dict_config(LoggingConfig(format="json", level="warning"))
    assert config["formatters"]["caudal"]["()"] == "streams.ops.logs.JsonFormatter"
    assert config["root"]["level"] == "WARNING"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logging.config.dictConfig(config)  # accepted by the standard library as it is
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
