"""The README's "Use it from Python" and "Use it in your own Beam pipeline" examples, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("## Use it from Python", "## Use it in your own Beam pipeline")


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one README section (up to the next ``## `` heading)."""
    text = (REPO / "README.md").read_text()
    start = text.index(section + "\n")
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```python\n(.*?)```", text[start:end if end != -1 else None], flags=re.S)


def test_the_sections_have_examples():
    assert [len(python_blocks(s)) for s in SECTIONS] == [3, 2]


@pytest.mark.parametrize(
    ("section", "index"), [(s, i) for s, n in zip(SECTIONS, (3, 2), strict=True) for i in range(n)],
    ids=["load", "train", "search", "beam", "runinference"],
)
def test_readme_example_runs(section, index, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the examples use models/default as a relative path, as a reader would
    code = python_blocks(section)[index]
    exec(compile(code, f"README.md: {section} #{index + 1}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    if index == 0 and section == SECTIONS[0]:
        assert "['sequence', 'autoencoder', 'a']" in out
    if index == 2 and section == SECTIONS[0]:
        assert out.startswith("[42, ")  # the sentence the query was made from comes first
    if index == 0 and section == SECTIONS[1]:
        assert '"reason": "token_out_of_range"' in out and '"id": 2' in out
    if index == 1 and section == SECTIONS[1]:
        assert sorted(line.split()[0] for line in out.splitlines()) == ["a", "b"]
