"""The code in the docs runs as written: README's "Python API" block and the worked examples of
docs/architecture.md (a new field, a new solver, a new gradient strategy), each executed verbatim."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path, after: str | None = None) -> list[str]:
    """The ```python blocks of a Markdown file (only those after the heading `after`, up to the next `## `)."""
    text = path.read_text()
    if after is not None:
        text = text.split(after, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_architecture_worked_examples():
    blocks = python_blocks(ROOT / "docs" / "architecture.md")
    assert len(blocks) == 3
    assert all(len(block.strip().splitlines()) <= 30 for block in blocks)
    namespace: dict = {}
    for block in blocks:  # one namespace: the strategy example reuses the field of the first
        exec(compile(block, "docs/architecture.md", "exec"), namespace)


def test_readme_python_api(tmp_path, monkeypatch):
    (block,) = python_blocks(ROOT / "README.md", after="## Python API")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    results = json.loads((tmp_path / "runs" / "python_api" / "results.json").read_text())
    assert results["parameters"] == 240  # §5.1 model 2
    assert 0.0 <= results["test_acc"] <= 1.0
