"""Every framework integration is an extra: without its framework, one error names what to install."""

import importlib
import sys

import pytest

from seeking.cli.main import main
from seeking.errors import ConfigError

# integration module -> (the framework it imports, the extra that installs it)
INTEGRATIONS = {
    "seeking.integrations.hf_trainer": ("transformers", "transformers"),
    "seeking.integrations.lightning": ("lightning", "lightning"),
}


def hide(monkeypatch, framework: str) -> None:
    """Make ``framework`` not installed for this test: importing it or any of its modules (some may have
    been imported by earlier tests) raises ImportError."""
    for name in [n for n in sys.modules if n == framework or n.startswith(framework + ".")] or [framework]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("module", sorted(INTEGRATIONS))
def test_an_integration_without_its_framework_names_the_extra(module, monkeypatch):
    framework, extra = INTEGRATIONS[module]
    monkeypatch.delitem(sys.modules, module, raising=False)
    hide(monkeypatch, framework)
    with pytest.raises(ConfigError, match=rf"pip install 'seeking\[{extra}\]'"):
        importlib.import_module(module)


@pytest.mark.parametrize("call", ["excitable", "tiny_config"])
def test_the_transformers_helpers_without_transformers_name_the_extra(call, monkeypatch):
    from seeking.integrations import torchtitan, transformers  # they import their framework only when used

    hide(monkeypatch, "transformers")
    hide(monkeypatch, "torchtitan")
    with pytest.raises(ConfigError, match=r"pip install 'seeking\[transformers\]'"):
        transformers.excitable(None) if call == "excitable" else transformers.tiny_config("olmoe", 10, 16)
    with pytest.raises(ConfigError, match=r"pip install 'seeking\[torchtitan\]'"):
        torchtitan.excitable(None)


def test_excite_on_a_transformers_model_without_transformers_exits_2(monkeypatch, tmp_path, capsys):
    text = tmp_path / "poem.txt"
    text.write_text("to be or not to be\n" * 40, encoding="utf-8")
    hide(monkeypatch, "transformers")
    out = tmp_path / "run"
    assert main(["excite", "--model", "hf_olmoe_tiny", "--data", str(text), "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'seeking[transformers]'" in err and err.count("\n") == 1 and not out.exists()
