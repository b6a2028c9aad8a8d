"""The ``seeking`` command line: train, compare, evaluate, excite, report, models.

Bad input gives one line on stderr and exit code 2; nothing is written before the input is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..errors import ConfigError, SeekingError, SeekingWarning
from ..models import list_models
from ..runs import (
    COMPARISON_CSV,
    COMPARISON_JSON,
    COMPARISON_MD,
    EXCITATION_CSV,
    EXCITATION_JSON,
    EXCITATION_MD,
    REPORT,
    SUMMARY,
    read_run_config,
)
from ..training.config import GROUPS, ExciteConfig, TrainConfig, field_annotation, field_choices
from ..version import __version__
from ..wording import counted

# options of train and compare that are no configuration field, with their defaults (for --resume's refusal)
TRAIN_EXTRAS: dict[str, object] = {"pair": None, "out": None}
_TYPES = {"int": int, "float": float, "str": str}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(field: dataclasses.Field) -> str:
    """The annotation of ``field`` without ``| None``: 'int', 'list[str]', 'dict[str, Any]'..."""
    return field_annotation(field).removesuffix(" | None")


def _argument(field: dataclasses.Field) -> dict[str, Any]:
    """The ``add_argument`` keywords of a configuration field: the type from its annotation (bool: a
    switch; list: one or more values; dict: a JSON object, parsed by :func:`_config_values`), the
    help, choices, metavar from its metadata, and its default."""
    meta, kind, choices = field.metadata, _kind(field), field_choices(field)
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    text = meta["help"].replace("%", "%%").replace("{choices}", ", ".join(choices or ()))
    if "{default}" in text:
        text = text.replace("{default}", "%(default)s")
    elif default is not None and kind != "bool" and not kind.startswith("dict[") and "(default:" not in text:
        text += " (default: %(default)s)"
    kwargs: dict[str, Any] = {"dest": field.name, "help": text}
    if kind == "bool":
        return {**kwargs, "action": argparse.BooleanOptionalAction if default else "store_true", "default": default}
    if kind.startswith("dict["):
        return {**kwargs, "default": json.dumps(default)}
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    if kind.startswith("list["):
        kwargs |= {"nargs": "+", "type": _TYPES[kind[5:-1]]}  # a list's values are checked by the config
    else:
        kwargs |= {"type": _TYPES[kind], "choices": choices}
    return {**kwargs, "default": default}


def _add_config_options(parser: argparse.ArgumentParser, config_type: type) -> dict[str, Any]:
    """One option ``--field-name`` per field of ``config_type``, in the argument groups its fields name
    (in the order of ``GROUPS``); returns the groups by name, for the options that are no field."""
    used = {f.metadata["group"] for f in dataclasses.fields(config_type)}
    groups = {name: parser.add_argument_group(name) for name in GROUPS if name in used}
    for f in dataclasses.fields(config_type):
        groups[f.metadata["group"]].add_argument(_flag(f.name), **_argument(f))
    return groups


def _add_run_options(group: argparse._ActionsContainer, folder: str, out_help: str) -> None:
    """The options of train, compare and excite that are no configuration field: resume, out, quiet."""
    group.add_argument(
        "--resume",
        metavar=folder,
        help=f"continue the unfinished run in {folder} from its newest checkpoint, with its saved options",
    )
    group.add_argument("--out", help=out_help)
    group.add_argument("--quiet", action="store_true", help="no progress output")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    groups = _add_config_options(parser, TrainConfig)
    _add_pair_option(groups["data and models"])
    _add_run_options(groups["run"], "RUN_DIR", "run folder (default: runs/<command>-<time>)")


class _Once(argparse.Action):
    """An option that may be given once: its spellings (``--pair``, ``--chain``) name one value, and a
    second one would silently replace the first."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{'/'.join(self.option_strings)} given twice: give the models once")
        setattr(namespace, self.dest, values)


def _add_pair_option(group: argparse._ArgumentGroup) -> None:
    """``--pair`` (also spelled ``--chain``) of train, compare and sweep compare."""
    group.add_argument(
        "--pair",
        "--chain",
        dest="pair",
        action=_Once,
        help="BASE:MOTIVATED, shorthand for --base and --motivated; timm names work too "
        "(e.g. efficientnet_b0:efficientnet_b2); more names make a chain, BASE:...:MOTIVATED "
        "(e.g. resnet20:resnet32:resnet56, the middle ones --intermediate)",
    )


def _json_object(option: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeekingError(f"{option} is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise SeekingError(f'{option} must be a JSON object such as {{"patch_size": 4}}, got {text!r}')
    return value


def _given(args: argparse.Namespace, config_type: type, extra: dict[str, object] | None = None) -> list[str]:
    """The options of ``config_type`` (and ``extra``: name -> default) whose value is not their parser
    default: "given" (the parser cannot tell an option given at its default value from one left out)."""
    defaults = {f.name: _argument(f)["default"] for f in dataclasses.fields(config_type)}
    return [name for name, default in {**defaults, **(extra or {})}.items() if getattr(args, name, default) != default]


def _refuse_options_with_resume(args: argparse.Namespace, config_type: type, extra: dict[str, object]) -> None:
    """``--resume`` takes the run's saved options; an option given beside it would be silently ignored."""
    given = _given(args, config_type, extra)
    if given:
        flags = ", ".join(_flag(name) for name in sorted(given))
        raise SeekingError(f"--resume continues a run with the options it was started with; drop {flags}")


def _config_values(args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    """The values of the fields of ``config_type`` given on the command line (a JSON option parsed)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)}
    for f in dataclasses.fields(config_type):
        if _kind(f).startswith("dict["):
            values[f.name] = _json_object(_flag(f.name), values[f.name])
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = _config_values(args, TrainConfig)
    if args.pair:
        names = args.pair.split(":")
        if len(names) < 2 or not all(names):
            raise SeekingError(
                f"--pair/--chain must look like BASE:MOTIVATED (e.g. resnet20:resnet32), or BASE:...:MOTIVATED for a "
                f"chain (e.g. resnet20:resnet32:resnet56), got {args.pair!r}"
            )
        defaults = TrainConfig()
        given = [f"--{n}" for n in ("base", "motivated") if values[n] != getattr(defaults, n)]
        if given:
            raise SeekingError(f"give the models once: in --pair/--chain or with {' and '.join(given)}, not both")
        if len(names) > 2 and values["intermediate"]:
            raise SeekingError("give a chain's middle models once: in --pair A:B:C or in --intermediate, not both")
        values["base"], values["motivated"] = names[0], names[-1]
        values["intermediate"] = names[1:-1] or values["intermediate"]
    return TrainConfig(**values).validate()


def _resumed_values(args: argparse.Namespace, config_type: type, extra: dict[str, object]) -> dict:
    """The saved options of the run that ``--resume`` names (after refusing options given beside it);
    the folder must be one that this command (``args.command``) wrote."""
    _refuse_options_with_resume(args, config_type, extra)
    return read_run_config(args.resume, args.command)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..reporting.comparison import level_p, p_name, trained_steps
    from ..training import train

    if args.resume:
        config, out = (
            TrainConfig.from_dict(_resumed_values(args, TrainConfig, TRAIN_EXTRAS)),
            args.resume,
        )
    else:
        config, out = config_from_args(args), args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(config, out, resume=bool(args.resume), progress=not args.quiet, log=_logger(args))
    s = result.summary
    for name, m in s["models"].items():
        result_text = f"test accuracy {m['accuracy']:.2f}%" if "accuracy" in m else f"val loss {m['loss']:.4f}"
        print(f"{name:9s} {m['model']:10s} {result_text}  -> {result.run_dir / m['checkpoint']}")
    chain = len(s["models"]) > 2
    print(
        f"{p_name(s['models'])} = {s['p']:.3f} ({s['motivated_steps']}/{s['steps']} steps "
        f"{'above the base' if chain else 'motivated'}, {counted(s['switches'], 'switch', 'switches')}), "
        f"{counted(s['skipped_steps'], 'skipped step')}, training {s['train_flops'] / 1e12:.4g} TFLOPs, "
        f"{s['train_seconds']:.1f}s"
    )
    if chain:  # each level's share of the steps
        print(
            "p by level (its share of the steps): "
            + ", ".join(
                f"{role} {level_p(s, role):.3f} ({trained_steps(s, role)}/{s['steps']})" for role in s["models"]
            )
        )
    return 0


def _compare_p(args: argparse.Namespace) -> None:
    """compare's (and sweep compare's) ``--p``: the parsers' default is None, so that a given --p is
    seen: the motivated arm's condition may take it (budget: its share), the random control never
    does (it takes the motivated run's count), so a --p that no arm reads is refused."""
    from ..motivation import CONDITIONS

    if args.p is None:
        args.p = TrainConfig().p
    elif not getattr(args, "resume", None) and "p" not in CONDITIONS[args.condition].options:
        taking = [name for name, kind in CONDITIONS.items() if kind.reads_loss and "p" in kind.options]
        raise SeekingError(
            f"--condition {args.condition} takes no --p, and compare's random control takes the motivated run's "
            f"count of large-model steps, so --p would do nothing: drop it (in compare it sets the share of "
            f"{' and '.join(taking)}; seeking train --condition random --p P runs a control at P)"
        )


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..flops import FLOPS_CONVENTION
    from ..reporting import markdown_table
    from ..reporting.comparison import gain_sentence
    from ..training.compare import compare

    random_control = not args.no_random_control
    _compare_p(args)
    if args.resume:
        values = _resumed_values(args, TrainConfig, {**TRAIN_EXTRAS, "no_random_control": False})
        random_control = bool(values.pop("random_control", True))
        config, out = TrainConfig.from_dict(values), args.resume
    else:
        config, out = config_from_args(args), args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
    result = compare(
        config,
        out,
        random_control=random_control,
        resume=bool(args.resume),
        progress=not args.quiet,
        log=_logger(args),
    )
    print(markdown_table(result["rows"]))
    print(f"\n{gain_sentence(result['rows'])} (classical base as reference). {FLOPS_CONVENTION}.")
    if "chain" in result:
        print(result["chain"])
    print(
        f"One seed ({config.seed}): no confidence interval. For paired 95% intervals over seeds, run "
        "seeking sweep compare --seeds 0 1 2 ... with these options."
    )
    print(f"results: {out}/{COMPARISON_MD}, {COMPARISON_CSV}, {COMPARISON_JSON}; report: {out}/{REPORT}/report.html")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data import DEFAULT_DATASET, load_dataset
    from ..data.core import chosen_subset
    from ..errors import DataError
    from ..model_file import load_model
    from ..training import evaluate
    from ..training.evaluate import check_model_data

    if args.test_subset is not None and args.test_subset < 1:
        raise DataError(f"--test-subset must be >= 1 examples, got {args.test_subset}")
    model, meta = load_model(args.checkpoint)
    norm = meta["extra"]
    if norm.get("kind") == "text":  # a language model: its validation loss is in its run's summary.json
        raise ConfigError(
            f"{args.checkpoint} is a language model ({meta['model']}, trained on {norm.get('data')}): seeking "
            "evaluate tests image classifiers; its validation loss and perplexity are in its run's summary.json"
        )
    # files written before the path was recorded name their data set only (loadable if it is digits)
    recorded = norm.get("data") or (DEFAULT_DATASET if norm.get("dataset") == DEFAULT_DATASET else None)
    if args.data is None and recorded is None:
        raise DataError(
            f"{args.checkpoint} does not record where its data set is (trained on {norm.get('dataset', 'unknown')!r}); "
            "give it with --data"
        )
    try:
        dataset = load_dataset(args.data or recorded, cache_dir=args.cache_dir, progress=sys.stderr.isatty())
    except DataError as exc:
        if args.data is not None:
            raise
        raise DataError(f"{exc} (the data set recorded in {args.checkpoint}; give another with --data)") from None
    for warning in check_model_data(meta, dataset):
        print(f"seeking: warning: {warning}", file=sys.stderr)
    mean, std = norm.get("mean", dataset.mean), norm.get("std", dataset.std)
    # the run's test subset (seed 0, as the run drew it) unless the user gives another data set or size
    subset = args.test_subset if args.test_subset is not None else (None if args.data else norm.get("test_subset"))
    test = chosen_subset(dataset.test, subset, 0, "test_subset")
    result = evaluate(model, test, mean, std)
    source = "" if args.data else ", the data set recorded in the model file"
    if subset and args.test_subset is None:
        source += f", the run's --test-subset {subset}"
    print(
        f"{meta['model']} on {dataset.name} test ({counted(len(test), 'image')}{source}): "
        f"accuracy {result['accuracy']:.2f}%, loss {result['loss']:.4f}"
    )
    return 0


def _add_excite_options(parser: argparse.ArgumentParser) -> None:
    groups = _add_config_options(parser, ExciteConfig)
    _add_run_options(groups["run"], "OUT", "results folder (default: runs/excite-<time>)")


def _cmd_excite(args: argparse.Namespace) -> int:
    from ..training.excite import compare_excitation

    if args.resume:
        config, out = ExciteConfig.from_dict(_resumed_values(args, ExciteConfig, {"out": None})), args.resume
    else:
        config = ExciteConfig(**_config_values(args, ExciteConfig)).validate()
        out = args.out or f"runs/excite-{time.strftime('%Y%m%d-%H%M%S')}"
    result = compare_excitation(config, out, log=_logger(args), resume=bool(args.resume), progress=not args.quiet)
    print(result["table"])
    print(f"results: {out}/{EXCITATION_MD}, {EXCITATION_CSV}, {EXCITATION_JSON}; report: {out}/{REPORT}/report.html")
    return 0


def _grid(option: str, config_type: type) -> tuple[str, list[Any]]:
    """``NAME=V1,V2,...`` of ``--grid`` as the option's name and its values, typed as the option is."""
    name, sep, text = option.partition("=")
    name = name.strip().replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    if not sep or not text or name not in fields:
        raise SeekingError(f"--grid takes NAME=V1,V2,... with NAME an option (e.g. lr=0.01,0.03,0.1), got {option!r}")
    kind = _kind(fields[name])
    if kind == "bool":
        words = {"true": True, "false": False}
        convert: Callable[[str], Any] = lambda word: words[word.lower()]  # noqa: E731
    else:
        convert = _TYPES.get(kind, str)  # the sweep refuses lists and objects, naming the option
    try:
        return name, [convert(v.strip()) for v in text.split(",")]
    except (KeyError, ValueError):
        raise SeekingError(f"--grid {name}: {text!r} is not a list of {kind} values") from None


def _refuse_given_and_swept(args: argparse.Namespace, config: Any, grid: dict[str, list[Any]]) -> None:
    """An option given directly and as a ``--grid`` axis: the grid's values would replace it without a
    word. "Given" as for ``--resume`` (:func:`_given`; docs/SWEEP.md); --pair/--chain gives base and
    motivated."""
    given = _given(args, type(config))
    clashes = []
    for name, values in grid.items():
        pair = getattr(args, "pair", None) and name in ("base", "motivated")  # given, even at the default
        if pair or name in given:
            flag, value = ("--pair/--chain", args.pair) if pair else (_flag(name), getattr(config, name))
            swept = ",".join(map(str, values))
            clashes.append(f"{flag} {value} is also swept by --grid {name}={swept}: drop {flag} or --grid {name}")
    if clashes:
        raise SeekingError(f"the grid's values would replace an option given beside it: {'; '.join(clashes)}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..training.sweep import SWEEP_JSON, SWEEP_MD, SWEEP_PLOT, sweep

    if args.sweep == "compare":
        if args.seed != TrainConfig().seed:
            raise SeekingError("seeking sweep compare runs every seed of --seeds; drop --seed")
        _compare_p(args)
        config, seeds, config_type = config_from_args(args), args.seeds, TrainConfig
    else:
        config = ExciteConfig(**_config_values(args, ExciteConfig)).validate()
        seeds, config_type = config.seeds, ExciteConfig
    axes = [_grid(option, config_type) for option in args.grid or []]
    grid = dict(axes)
    if len(grid) < len(axes):  # dict() would keep the last one's values without a word
        twice = sorted(name for name, n in Counter(name for name, _ in axes).items() if n > 1)
        raise SeekingError(
            f"--grid {', '.join(twice)} given more than once: give each option's values in one --grid, "
            f"e.g. --grid {twice[0]}=V1,V2,V3"
        )
    _refuse_given_and_swept(args, config, grid)
    out = args.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    result = sweep(args.sweep, config, grid, seeds, out, within=args.within, progress=not args.quiet, log=_logger(args))
    print(result["table"])
    print(f"results: {out}/{SWEEP_MD}, {SWEEP_JSON}; the curve: {out}/{SWEEP_PLOT}")
    return 0


def _add_sweep_options(parser: argparse.ArgumentParser, config_type: type) -> dict[str, Any]:
    groups = _add_config_options(parser, config_type)
    group = parser.add_argument_group("sweep")
    group.add_argument(
        "--grid",
        action="append",
        metavar="NAME=V1,V2,...",
        help="an option and its values to sweep (repeat for several options: every combination runs); "
        "the sweep needs --holdout N, the validation images on which each arm's setting is chosen",
    )
    group.add_argument(
        "--within",
        type=float,
        default=2.0,
        help="usable learning rates: mean validation accuracy within this many points of the arm's best "
        "(default: %(default)s)",
    )
    group.add_argument("--out", help="sweep folder; the same command again continues it (default: runs/sweep-<time>)")
    group.add_argument("--quiet", action="store_true", help="no progress output")
    return groups


def _cmd_report(args: argparse.Namespace) -> int:
    from ..reporting.report import write_report

    several = f"runs/report-{time.strftime('%Y%m%d-%H%M%S')}"
    out = args.out or (f"{args.run_dirs[0]}/{REPORT}" if len(args.run_dirs) == 1 else several)
    report = write_report(args.run_dirs, out)
    for path in report.incomplete:
        print(f"note: {path} is incomplete (no {SUMMARY}); reported as far as it went", file=sys.stderr)
    print(f"report: {report.files[-1]} ({counted(len(report.files) - 1, 'more file')} beside it)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    print("\n".join(list_models()))
    return 0


def _logger(args: argparse.Namespace):
    return (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))


class _Parser(argparse.ArgumentParser):
    """argparse, with bad input said as every other error of the command line is: one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"seeking: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="seeking",
        description="Training-time conditional capacity on PyTorch: Motivation training and Excitation.",
    )
    parser.add_argument("--version", action="version", version=f"seeking {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="one motivated (or classical) training run; writes a run folder")
    _add_training_options(p)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("compare", help="classical base, classical large, motivated run (and random control): one table")
    _add_training_options(p)
    p.add_argument("--no-random-control", action="store_true", help="skip the random-condition control arm")
    p.set_defaults(func=_cmd_compare, p=None)
    p = sub.add_parser("evaluate", help="test accuracy of a saved model file")
    p.add_argument("checkpoint", help="a .safetensors model file written by seeking train")
    p.add_argument("--data", help="data set, as for train (default: the one recorded in the model file)")
    p.add_argument(
        "--test-subset",
        type=int,
        help="test on this many examples, drawn as train draws them (default: the run's own, with its data set)",
    )
    p.add_argument("--cache-dir")
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("excite", help="train an MoE model with a base optimizer, plain and with Excitation: one table")
    _add_excite_options(p)
    p.set_defaults(func=_cmd_excite)
    p = sub.add_parser(
        "sweep",
        help="compare or excite over a grid of settings and seeds; each arm at its best setting, chosen on "
        "held-out training images, then tested",
    )
    kinds = p.add_subparsers(dest="sweep", required=True)
    q = kinds.add_parser("compare", help="seeking compare's arms over the grid")
    groups = _add_sweep_options(q, TrainConfig)
    _add_pair_option(groups["data and models"])
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one comparison per seed and setting")
    q.set_defaults(p=None)  # as compare's: a --p that no arm reads is refused (_compare_p)
    q = kinds.add_parser("excite", help="seeking excite's arms over the grid")
    _add_sweep_options(q, ExciteConfig)
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("report", help="plots (PNG) and one self-contained report.html of run folders")
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="folders written by seeking train, compare or excite (an unfinished run is reported as far as it went)",
    )
    p.add_argument(
        "--out", help="report folder (default: RUN_DIR/report for one folder, runs/report-<time> for several)"
    )
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(func=_cmd_models)
    return parser


def _one_line_warnings(previous: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints a ``SeekingWarning`` as one line on stderr (``--quiet``
    or not: it is no progress output) and hands other warnings to ``previous``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, SeekingWarning):
            print(f"seeking: warning: {message}", file=sys.stderr, flush=True)
        else:
            previous(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            if int(os.environ.get("RANK", "0")):  # under torchrun, rank 0 alone prints results and warnings
                warnings.simplefilter("ignore", SeekingWarning)
                with contextlib.redirect_stdout(io.StringIO()):
                    return args.func(args)
            return args.func(args)
    except SeekingError as exc:
        print(f"seeking: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # RunInterrupted says where the checkpoint is
        print(f"seeking: interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
