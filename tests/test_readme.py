"""The README's Python API example runs as written (in a fresh process, from the repo root)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_readme_python_example_runs_as_written(tmp_path):
    blocks = python_blocks((REPO / "README.md").read_text())
    assert blocks, "the README lost its Python API example"
    # run where the README's relative paths resolve, without writing into the checkout
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(1, 10)" in proc.stdout  # the printed output shape the README promises
    assert (tmp_path / "tiny.so").exists() and (tmp_path / "tiny.db").exists()


def test_readme_cli_commands_exist():
    """Every console command the README shows is one pyproject installs."""
    text = (REPO / "README.md").read_text()
    scripts = set(re.findall(r"^(\w+) = \"tilecraft\.cli:", (REPO / "pyproject.toml").read_text(), flags=re.M))
    shown = set(re.findall(r"^(tune|tilecraft) ", text, flags=re.M))
    assert shown and shown <= scripts
