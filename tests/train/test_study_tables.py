"""train/README.md's study tables are the committed study.json files rendered by train.study's table
writer: never typed, never stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import study, study_tables


def test_the_readme_tables_match_the_committed_results() -> None:
    text = study_tables.README.read_text()
    names = [m.group("name") for m in study_tables.BLOCK.finditer(text)]
    assert names  # the README shows at least one study
    assert study_tables.render(text) == text, "run python -m train.study_tables"


def test_render_replaces_only_the_blocks(tmp_path: Path) -> None:
    summary = json.loads((study_tables.RESULTS / "toy" / "study.json").read_text())
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "study.json").write_text(json.dumps(summary))
    text = "before\n<!-- study-table toy -->\nstale | 1 |\n<!-- /study-table -->\nafter\n"
    rendered = study_tables.render(text, tmp_path)
    assert rendered == (
        "before\n<!-- study-table toy -->\n" + study.markdown(summary) + "<!-- /study-table -->\nafter\n"
    )
    with pytest.raises(FileNotFoundError, match="no committed study 'absent'"):
        study_tables.render("<!-- study-table absent -->\n<!-- /study-table -->", tmp_path)


def test_check_reports_a_stale_readme(tmp_path: Path, capsys) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- study-table toy -->\ntyped\n<!-- /study-table -->\n")
    assert study_tables.main(["--readme", str(readme), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert study_tables.main(["--readme", str(readme)]) == 0
    assert study_tables.main(["--readme", str(readme), "--check"]) == 0
