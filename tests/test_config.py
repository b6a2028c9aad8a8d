"""One configuration vocabulary: the options of train, compare and excite are generated from the
configuration fields (flag, type, help, choices, group), so a new option is one field."""

import argparse
import contextlib
import dataclasses
import io

import pytest

from seeking import ConfigError, TrainConfig
from seeking.cli.main import _add_config_options, _config_values, build_parser, main
from seeking.training.config import ExciteConfig, RunConfig, field_choices, option

COMMANDS = [("train", TrainConfig), ("compare", TrainConfig), ("excite", ExciteConfig)]


def help_of(command):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("command,config_type", COMMANDS)
def test_every_field_is_an_option_with_its_help_group_and_default(command, config_type):
    args = build_parser().parse_args([command])
    defaults = config_type()
    if command == "compare":
        args.p = defaults.p  # compare's --p defaults to None, to see it given (refused unless the condition takes it)
    assert config_type(**_config_values(args, config_type)) == defaults
    text = help_of(command)
    for f in dataclasses.fields(config_type):
        flag = "--" + f.name.replace("_", "-")
        assert f"  {flag} " in text or f"  {flag}\n" in text, flag
        # the help's first words (the rest may be wrapped, at a hyphen too)
        assert " ".join(f.metadata["help"].split()[:2]) in " ".join(text.split()), f.name
    for group in {f.metadata["group"] for f in dataclasses.fields(config_type)}:
        assert f"\n{group}:\n" in text
    assert ("\nmotivation:\n" in text) == (config_type is TrainConfig)
    assert "\nexcitation:\n" in text  # gamma for every command; train also takes --excitation


def test_the_field_types_decide_how_an_option_parses():
    argv = ["excite", "--seeds", "3", "4", "--model-kwargs", '{"width": 8}', "--train-subset", "5", "--amp"]
    argv += ["--channels-last", "--gamma", "2", "--schedule", "cosine", "--optimizer", "adam"]
    values = _config_values(build_parser().parse_args(argv), ExciteConfig)
    expected = {"seeds": [3, 4], "model_kwargs": {"width": 8}, "train_subset": 5, "amp": True, "channels_last": True}
    expected |= {"gamma": 2.0, "schedule": "cosine", "optimizer": "adam", "test_subset": None}
    assert {k: values[k] for k in expected} == expected
    assert isinstance(values["gamma"], float) and ExciteConfig(**values).validate().seeds == [3, 4]


def test_units_are_in_the_names():
    assert build_parser().parse_args(["train", "--eval-every-epochs", "3"]).eval_every_epochs == 3
    assert build_parser().parse_args(["excite", "--eval-every-steps", "30"]).eval_every_steps == 30
    with pytest.raises(ConfigError, match=r"^eval_every_steps must be >= 1, got 0$"):
        ExciteConfig(eval_every_steps=0).validate()
    with pytest.raises(ConfigError, match=r"^eval_every_epochs must be >= 0, got -1$"):
        TrainConfig(eval_every_epochs=-1).validate()


def test_a_new_field_is_one_option():
    @dataclasses.dataclass(kw_only=True)
    class Extended(TrainConfig):
        width_factor: float = option(1.5, help="how much wider the large model is", group="optimisation")
        tags: list[str] = option(  # noqa: RUF009 (option makes a dataclass field)
            ["a"], help="labels, any of: {choices}", group="run", choices=("a", "b"), noun="tag"
        )
        note: str | None = option(None, help="a free note", group="run")

    parser = argparse.ArgumentParser()
    _add_config_options(parser, Extended)
    args = parser.parse_args(["--width-factor", "2", "--tags", "b", "a"])
    config = Extended(**_config_values(args, Extended)).validate()
    assert (config.width_factor, config.tags, config.note) == (2.0, ["b", "a"], None)
    assert "labels, any of: a, b (default: ['a'])" in " ".join(parser.format_help().split())
    assert field_choices(dataclasses.fields(Extended)[-2]) == ("a", "b")
    with pytest.raises(ConfigError, match=r"^unknown tag 'c'; choose one of: a, b$"):
        Extended(tags=["a", "c"]).validate()


@pytest.mark.parametrize(
    "argv,flags",
    [
        (["train", "--optimizer", "adam", "--eval-every-epochs", "3"], "--eval-every-epochs, --optimizer"),
        (["compare", "--amp", "--pair", "resnet20:resnet44"], "--amp, --pair"),
        (["excite", "--channels-last", "--seeds", "4", "--model-kwargs", "{}"], "--channels-last, --seeds"),
    ],
)
def test_resume_refuses_every_field_given_beside_it(argv, flags, tmp_path, capsys):
    assert main([*argv, "--resume", str(tmp_path), "--quiet"]) == 2
    assert f"--resume continues a run with the options it was started with; drop {flags}\n" in capsys.readouterr().err


def test_bfloat16_autocast_is_accepted_on_cpu_for_every_command():
    # one rule for every command (CPU runs it, slowly); tests/test_excite.py trains under it on the CPU
    for config_type in (TrainConfig, ExciteConfig):
        assert config_type(amp=True, device="cpu").validate().amp is True
    assert build_parser().parse_args(["train", "--amp"]).amp is True


def test_the_shared_fields_are_declared_once():
    shared = {f.name for f in dataclasses.fields(RunConfig)}
    assert shared == {f.name for f in dataclasses.fields(TrainConfig)} & {
        f.name for f in dataclasses.fields(ExciteConfig)
    }
    for config_type in (TrainConfig, ExciteConfig):
        for f in dataclasses.fields(config_type):
            assert f.metadata["help"] and f.metadata["group"], f.name  # every field speaks for itself


@pytest.mark.parametrize(
    "config,said",
    [
        (TrainConfig(optimizer="adam", momentum=0.5), ["--momentum does nothing with --optimizer adam"]),
        (TrainConfig(condition="decrease", p=0.9), ["--p does nothing with --condition decrease"]),
        (TrainConfig(condition="random", k=3), ["--k does nothing with --condition random"]),
        (TrainConfig(condition="never", sync="copy"), ["--sync does nothing with --condition never"]),
        (TrainConfig(epochs=1, warmup_epochs=2.0), ["--warmup-epochs 2.0 is longer than the run's 1 epochs"]),
        (ExciteConfig(data="poem.txt", train_subset=10), ["--train-subset does nothing with text data"]),
        (ExciteConfig(block_size=32), ["--block-size does nothing with image data"]),
        (TrainConfig(tokenizer="tok"), ["--tokenizer does nothing with image data"]),
        (ExciteConfig(arms=["none"], gamma=2.0), ["--gamma does nothing without an Excitation arm"]),
        (TrainConfig(optimizer="adam", momentum=0.0, k=3), []),  # what is set is used
        (ExciteConfig(optimizer="rmsprop", momentum=0.5, gamma=2.0), []),
    ],
)
def test_an_option_that_does_nothing_is_named(config, said):
    unused = config.unused_options()
    assert len(unused) == len(said) and all(u.startswith(s) for u, s in zip(unused, said, strict=True))


def test_the_command_line_warns_of_an_option_that_does_nothing(capsys, tmp_path):
    argv = ["train", "--optimizer", "adam", "--momentum", "0.5", "--train-subset", "64", "--test-subset", "20"]
    assert main([*argv, "--epochs", "1", "--batch-size", "32", "--quiet", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err  # once, though the run goes on
    assert err.count("seeking: warning: --momentum does nothing with --optimizer adam, which takes none\n") == 1
    # a bad run is refused without it: the error is the one line
    assert main([*argv, "--data", "/nonexistent/cifar", "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.startswith("seeking: error: ")
