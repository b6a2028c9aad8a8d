"""The README's Python quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_quick_start_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    quick_start = next(b for b in blocks if "Motivator(" in b)
    exec(compile(quick_start, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "extra capacity" in printed and re.search(
        r"p = 0\.\d\d \{'base': \d+\.\d+, 'motivated': \d+\.\d+\}", printed
    )


def test_readme_excitation_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "Excitation(" in b)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "factors of the first layer: tensor([" in printed and "'dead_fraction':" in printed
