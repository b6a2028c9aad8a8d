"""The run folder has one owner (seeking.runs): its file names, starting, resuming and refusing a
folder; and no module of the package imports the package face (seeking/__init__.py)."""

import ast
import json
from pathlib import Path

import pytest

import seeking
import seeking.runs as runs
from seeking import CheckpointError, ConfigError
from seeking.runs import CONFIG, INCOMPLETE, RUN_KINDS, open_run_dir, read_run_config, resume_command, run_config
from seeking.training.checkpoint import check_state
from seeking.version import __version__

PACKAGE = Path(seeking.__file__).parent


def face_imports(source: str, module: str) -> list[str]:
    """The imports in ``source`` (the module named ``module``, e.g. ``seeking.training.loop``) that
    load names from the package face ``seeking``: ``import seeking``, ``from seeking import X`` and
    relative imports resolving there (``from .. import X``), unless X is a submodule."""
    package = module.split(".")[:-1]  # the package a module's relative imports start from
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name == "seeking"]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [a.name for a in node.names if not _is_submodule(a.name)]
            if target == "seeking" and names:
                found.append(
                    f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import {', '.join(names)}"
                )
    return found


def _is_submodule(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


@pytest.mark.parametrize(
    "source,module",
    [
        ("import seeking", "seeking.training.loop"),
        ("from seeking import __version__", "seeking.reporting.report"),
        ("from .. import __version__", "seeking.training.loop"),
        ("from . import load_model", "seeking.runs"),
    ],
)
def test_the_face_import_check_sees_each_form(source, module):
    assert face_imports(source, module) != []


@pytest.mark.parametrize(
    "source,module",
    [
        ("from ..version import __version__", "seeking.training.loop"),
        ("from . import html", "seeking.reporting.report"),
        ("from .. import runs", "seeking.cli.main"),
        ("import seeking.runs as runs", "seeking.cli.main"),
    ],
)
def test_the_face_import_check_lets_the_ground_floor_through(source, module):
    assert face_imports(source, module) == []


def test_no_module_imports_the_package_face():
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]
    assert len(modules) > 40  # the walk found the package
    found = {}
    for path in modules:
        # seeking.training.__init__: a package's own relative imports start from the package itself
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if hits := face_imports(path.read_text(), name):
            found[str(path.relative_to(PACKAGE))] = hits
    assert found == {}


def test_run_file_names_are_written_only_in_runs_py():
    names = {CONFIG, INCOMPLETE, runs.STEPS_LOG, runs.EPOCHS_LOG, *runs.MODEL_FILES.values()}
    names |= {kind.result for kind in RUN_KINDS.values()} | {runs.COMPARISON_MD, runs.EXCITATION_CSV}
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "runs.py" or path.parent != PACKAGE
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and node.value in names
        # transformers' own model file, which happens to share a run file's name
        and not (path.relative_to(PACKAGE).as_posix() == "integrations/transformers.py" and node.value == CONFIG)
    ]
    assert found == []


def test_version_is_one_fact():
    assert seeking.__version__ == __version__ == "0.2.0"


def test_a_checkpoint_of_the_previous_version_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=f"written by seeking 0.1.0; this is {__version__}"):
        check_state({"seeking_version": "0.1.0", "config": {}}, {}, tmp_path)
    (tmp_path / CONFIG).write_text(json.dumps({**run_config("train", {"lr": 0.1}), "seeking_version": "0.1.0"}))
    with pytest.raises(ConfigError, match=f"it was started by seeking 0.1.0; this is {__version__}"):
        read_run_config(tmp_path, "train")


@pytest.mark.parametrize(
    "kind,noun", [("train", "the run"), ("compare", "the comparison"), ("excite", "the experiment")]
)
def test_open_run_dir_claims_a_new_folder_and_resumes_only_an_unfinished_one(kind, noun, tmp_path):
    folder = tmp_path / "run"
    record = run_config(kind, {"seed": 3})
    assert open_run_dir(kind, folder, record, resume_command(kind, folder), resume=False) == folder
    assert json.loads((folder / CONFIG).read_text()) == json.loads(json.dumps(record))
    assert runs.recorded_resume_command(folder) == f"seeking {kind} --resume {folder}"
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        open_run_dir(kind, folder, record, resume_command(kind, folder), resume=False)
    before = sorted(p.name for p in folder.iterdir())
    assert open_run_dir(kind, folder, record, "unused", resume=True) == folder  # unfinished: resumed as it is
    assert sorted(p.name for p in folder.iterdir()) == before
    assert read_run_config(folder, kind) == {"seed": 3}
    (folder / RUN_KINDS[kind].result).write_text("{}")
    result = RUN_KINDS[kind].result
    for refuse in (
        lambda: open_run_dir(kind, folder, record, "unused", resume=True),
        lambda: read_run_config(folder, kind),
    ):
        with pytest.raises(ConfigError, match=rf"cannot resume .*: {noun} is complete \(it has {result}\)"):
            refuse()


class Rank1:
    """The second process of a run under torchrun: it waits, and does not write."""

    main = False

    def __init__(self):
        self.waited = 0

    def barrier(self):
        self.waited += 1


def test_only_the_main_process_claims_the_folder(tmp_path):
    rank = Rank1()
    folder = runs.claim_run_dir(tmp_path / "run", {}, "resume", rank)
    assert rank.waited == 1 and not folder.exists()
