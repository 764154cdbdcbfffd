"""README's generated tables match the code they are generated from."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools.readme import TABLES, markers, write_readme
from streams.ops.metrics import metric_rows

README = Path(__file__).resolve().parents[3] / "README.md"


@pytest.mark.parametrize("table", list(TABLES))
def test_readme_tables_are_generated_from_the_code(table: str) -> None:
    begin, end = markers(table)
    text = README.read_text().partition(begin)[2].partition(end)[0].strip()
    assert text == TABLES[table][1](), f"README's {table} table drifted: run `make readme`"


def test_write_readme_replaces_only_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    parts = ["# before\n"]
    for table in TABLES:
        begin, end = markers(table)
        parts.append(f"{begin}\n| stale |\n{end}\n\nuntouched-text\n")
    path.write_text("\n".join(parts))
    assert write_readme(path) is True
    text = path.read_text()
    assert text.startswith("# before\n") and text.count("untouched-text") == len(TABLES)
    assert "| stale |" not in text
    assert write_readme(path) is False
    path.write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        write_readme(path)


def test_every_metric_is_named_caudal_and_explained() -> None:
    rows = list(metric_rows())
    assert len(rows) > 40
    assert [name for name, _, _ in rows if not name.startswith("caudal_")] == []
    assert [name for name, _, meaning in rows if len(meaning) < 20] == []
    assert len({name for name, _, _ in rows}) == len(rows)
