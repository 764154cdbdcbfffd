"""README's generated tables: configuration keys and metrics, each from its one source.

`make readme` (`python -m streams.devtools.readme README.md`) rewrites them between their
markers; tests fail when README drifts from the code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from streams.config.reference import config_table
from streams.ops.metrics import metric_rows

__all__ = ["TABLES", "markers", "metrics_table", "write_readme"]


def metrics_table() -> str:
    """The metrics table, header included."""
    lines = ["| metric | labels | meaning |", "|---|---|---|"]
    for name, labels, meaning in metric_rows():
        label_text = ", ".join(f"`{label}`" for label in labels)
        lines.append(f"| `{name}` | {label_text} | {meaning} |")
    return "\n".join(lines)


TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "configuration": ("streams/config/models.py", config_table),
    "metrics": ("streams/ops/metrics.py", metrics_table),
}


def markers(table: str) -> tuple[str, str]:
    """The comment lines around a generated table in README."""
    source = TABLES[table][0]
    return (
        f"<!-- {table} table: generated from {source} by `make readme` -->",
        f"<!-- end of the {table} table -->",
    )


def write_readme(path: Path) -> bool:
    """Put every current table between its markers in `path`; True if the file changed."""
    text = original = path.read_text()
    for table, (_, generate) in TABLES.items():
        begin, end = markers(table)
        head, found, rest = text.partition(begin)
        _, found_end, tail = rest.partition(end)
        if not found or not found_end:
            raise ValueError(f"{path}: the markers of the {table} table are missing")
        text = f"{head}{begin}\n{generate()}\n{end}{tail}"
    if text != original:
        path.write_text(text)
    return text != original


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print(f"{target}: {'updated' if write_readme(target) else 'up to date'}")
