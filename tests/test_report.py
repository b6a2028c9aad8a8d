"""`seeking report`: plots and one self-contained HTML page from real (tiny) runs; TensorBoard logs;
bad folders fail with exit code 2."""

import base64
import html
import importlib.util
import json
import re
import shlex
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from seeking.cli.main import main
from seeking.reporting.plots import epoch_p, motivated_spans, moving_average
from seeking.runs import mark_incomplete

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
BOARD = ["--tensorboard"] if HAS_TENSORBOARD else []
needs_tensorboard = pytest.mark.skipif(not HAS_TENSORBOARD, reason="the tensorboard package is not installed")
TINY = ["--train-subset", "200", "--test-subset", "60", "--epochs", "2", "--batch-size", "32", "--quiet"]
TINY_EXCITE = ["--steps", "12", "--eval-every-steps", "6", "--batch-size", "64", "--seeds", "0", "--quiet"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A real comparison (it writes its own report into report/), with TensorBoard logs when possible."""
    out = tmp_path_factory.mktemp("runs") / "cmp"
    assert main(["compare", *TINY, "--no-random-control", *BOARD, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def excitation(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "exc"
    assert main(["excite", *TINY_EXCITE, "--arms", "none", "zero_sum", *BOARD, "--out", str(out)]) == 0
    return out


def assert_real_png(path):
    """A PNG that decodes, of a useful size, with many colours and data drawn in colour (axes and text
    are black and grey: coloured pixels are lines, bars, shading or heatmaps)."""
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] >= 400 and pixels.shape[0] >= 300, path
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 50, path
    coloured = pixels.max(axis=2).astype(int) - pixels.min(axis=2) > 60
    assert coloured.mean() > 0.002, f"{path} shows no data"


def assert_self_contained(page, pngs):
    """Every src/href of the page is a data URI, and it embeds exactly the PNG files written beside it."""
    references = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.IGNORECASE)
    assert references and all(r.startswith("data:") for r in references), references
    assert "url(" not in page and "@import" not in page
    embedded = {base64.b64decode(r.removeprefix("data:image/png;base64,")) for r in references}
    assert embedded == {p.read_bytes() for p in pngs}


def test_the_report_of_a_comparison(comparison):
    report = comparison / "report"
    names = {p.name for p in report.iterdir()}
    plots = {"cmp-accuracy.png", "cmp-cost.png"} | {f"cmp-{a}-loss.png" for a in ("classical_base", "classical_large")}
    assert names == {*plots, "cmp-motivated-loss.png", "cmp-comparison.md", "cmp-comparison.csv", "report.html"}
    for png in report.glob("*.png"):
        assert_real_png(png)
    page = (report / "report.html").read_text()
    assert_self_contained(page, list(report.glob("*.png")))
    # the same table, from the same helpers, as seeking compare wrote
    assert (report / "cmp-comparison.md").read_text() == (comparison / "comparison.md").read_text()
    assert (report / "cmp-comparison.csv").read_text() == (comparison / "comparison.csv").read_text()
    summary = json.loads((comparison / "motivated" / "summary.json").read_text())
    assert f"{summary['models']['motivated']['accuracy']:.2f}" in page
    config = json.loads((comparison / "motivated" / "config.json").read_text())
    assert html.escape(shlex.join(config["command"])) in page and "Incomplete" not in page


def test_the_report_of_an_excitation_experiment(excitation):
    report = excitation / "report"
    pngs = sorted(report.glob("*.png"))
    assert [p.name for p in pngs] == ["exc-phi.png", "exc-routing.png", "exc-utilization.png"]
    for png in pngs:
        assert_real_png(png)
    page = (report / "report.html").read_text()
    assert_self_contained(page, pngs)
    config = json.loads((excitation / "config.json").read_text())
    assert html.escape(shlex.join(config["command"])) in page and "excitation zero_sum" in page


def test_excite_records_per_layer_utilization_and_phi(excitation):
    runs = {r["arm"]: r for r in json.loads((excitation / "excitation.json").read_text())["runs"]}
    for arm, run in runs.items():
        assert [c["step"] for c in run["curve"]] == [6, 12]
        for entry in run["curve"]:
            assert len(entry["utilization"]) == 4  # micro_moe's MoE layers
            for layer in entry["utilization"]:  # utilization: count over the fair share, so its mean is 1
                assert len(layer) == 128 and np.mean(layer) == pytest.approx(1.0)
            dead = np.mean([u == 0 for layer in entry["utilization"] for u in layer])
            assert dead == pytest.approx(entry["dead_fraction"])
            if arm == "none":
                assert entry["phi"] is None
            else:  # zero-sum factors average 1 in each layer
                assert [np.mean(f) for f in entry["phi"]] == pytest.approx([1.0] * 4)


def test_report_of_several_folders_with_an_unfinished_run(comparison, excitation, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(comparison / "motivated", unfinished)
    (unfinished / "summary.json").unlink()
    mark_incomplete(unfinished, f"seeking train --resume {unfinished}")
    with open(unfinished / "steps.jsonl", "a") as f:
        f.write('{"step": 99, "epo')  # cut off while the run was writing
    out = tmp_path / "report"
    assert main(["report", str(unfinished), str(excitation), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"note: {unfinished} is incomplete" in captured.err and "report.html" in captured.out
    page = (out / "report.html").read_text()
    assert "Incomplete" in page and "2 of 2 epochs" in page and f"seeking train --resume {unfinished}" in page
    assert {p.name for p in out.glob("*.png")} >= {"unfinished-loss.png", "unfinished-cost.png", "exc-phi.png"}
    assert_self_contained(page, list(out.glob("*.png")))


def test_report_of_a_comparison_that_has_not_started_an_arm(comparison, tmp_path, capsys):
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(comparison / "config.json", started)
    mark_incomplete(started, f"seeking compare --resume {started}")
    assert main(["report", str(started)]) == 0
    page = (started / "report" / "report.html").read_text()
    assert "arms present: none yet" in page and f"seeking compare --resume {started}" in page
    assert not list((started / "report").glob("*.png"))


@pytest.mark.parametrize(
    "files,message",
    [
        (None, "no such run folder"),
        ({"notes.txt": "hello"}, "holds no seeking run"),
        ({"config.json": "{not json"}, "cannot read"),
        ({"excitation.json": "[1, 2]"}, "expected a JSON object"),
        ({"config.json": "{}", "steps.jsonl": "{}\nnope\n{}\n"}, "steps.jsonl line 2 is not valid JSON"),
        ({"config.json": '{"arms": ["none"]}'}, "Excitation experiment that has not finished"),
    ],
)
def test_report_of_a_bad_folder_exits_2_and_writes_nothing(files, message, tmp_path, capsys):
    run = tmp_path / "run"
    if files is not None:
        run.mkdir()
        for name, text in files.items():
            (run / name).write_text(text)
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seeking: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


@needs_tensorboard
def test_tensorboard_events_hold_the_logged_scalars(comparison, excitation):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = comparison / "motivated"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    epochs = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("step/loss")] == pytest.approx([s["loss"] for s in steps], rel=1e-6)
    assert [e.step for e in events.Scalars("epoch/p")] == [6, 12]
    accuracy = [e.value for e in events.Scalars("epoch/motivated_accuracy")]
    assert accuracy == pytest.approx([e["motivated_accuracy"] for e in epochs], rel=1e-6)
    curve = json.loads((excitation / "excitation.json").read_text())["runs"][1]["curve"]
    events = EventAccumulator(str(excitation / "tensorboard" / "zero_sum-seed0"))
    events.Reload()
    assert [e.value for e in events.Scalars("eval/dead_fraction")] == pytest.approx([c["dead_fraction"] for c in curve])
    assert [e.value for e in events.Scalars("eval/test_acc")] == pytest.approx([c["test acc %"] for c in curve])


def test_tensorboard_without_the_package_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    out = tmp_path / "run"
    for argv in (["train", *TINY], ["excite", *TINY_EXCITE]):
        assert main([*argv, "--tensorboard", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith("seeking: error: --tensorboard needs the tensorboard package")
            and "seeking[tensorboard]" in err
        )
        assert not out.exists()


def test_motivated_episodes_and_p_per_epoch():
    models = ["base", "motivated", "motivated", "base", "motivated", "base"]
    assert motivated_spans(models) == [(1, 2), (4, 1)]
    assert motivated_spans(["motivated"] * 3) == [(0, 3)]
    steps = [{"step": i, "epoch": 1 + i // 3, "model": m} for i, m in enumerate(models)]
    steps[4]["skipped"] = "non-finite loss or gradient"  # a skipped step trained nothing
    assert epoch_p(steps) == [(0, 3, pytest.approx(2 / 3)), (3, 3, 0.0)]


def test_moving_average_skips_missing_losses():
    values = np.array([1.0, np.nan, 3.0, 5.0, np.nan, np.nan, np.nan])
    assert moving_average(values, 3)[:4] == pytest.approx([1.0, 2.0, 4.0, 4.0])
    assert np.isnan(moving_average(values, 3)[-1])
