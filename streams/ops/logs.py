"""Log lines: one per event, `text` (key=value) or `json` (one object per line).

Every line carries time, level and component (the name of the module that logs).
Code logs its fields as `key=value` in the message and, where a log processor should index
them, passes `extra={"tenant": ..., "partition": ...}`; the JSON form puts those extras at the
top level. Span payloads are never logged at INFO or above.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import time
from typing import Any

from streams.config import LoggingConfig

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "logging_dict_config"]

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_PREFIXES = ("streams.", "policies.")


def _component(name: str) -> str:
    # Caudal's own modules by their name alone (`streams.pipeline.decide` -> `decide`).
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name.rsplit(".", 1)[-1]
    return name


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """`2026-11-26T07:00:00.000Z INFO component message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        """One line; extras appended as key=value."""
        message = record.getMessage()
        fields = "".join(f" {k}={v}" for k, v in _extras(record).items())
        line = f"{_timestamp(record)} {record.levelname} {_component(record.name)} {message}"
        line += fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """`{"time": ..., "level": ..., "component": ..., "message": ..., <extras>}`."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object; exceptions go into `exception` so the line stays one line."""
        doc: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "component": _component(record.name),
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def logging_dict_config(config: LoggingConfig) -> dict[str, Any]:
    """A `logging.config.dictConfig` document (also handed to Faust's worker)."""
    formatter = JsonFormatter if config.format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"caudal": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "caudal",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": config.level.upper(), "handlers": ["default"]},
    }


def configure_logging(config: LoggingConfig) -> None:
    """Set up the root logger for commands that run without Faust."""
    logging.config.dictConfig(logging_dict_config(config))
    logging.captureWarnings(True)
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
