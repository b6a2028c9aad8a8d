"""Device check: every CUDA path smoke-tested, the timing ratios, and one full-data CIFAR-10 comparison,
in one run of a few minutes on one GPU (issue 17); ``--tiny`` runs the same checks on the CPU in seconds
(tests/test_device_check.py runs it, so the script cannot rot).

The checks form a registry (:data:`CHECKS`, in the order they run), each time-boxed and isolated: a
failure or time-out is recorded and the next check runs. A check's ``share`` is its part of the run's
``--budget-s`` (the shares are weights: the defaults add up to the default budget, and ``--only`` or
another budget scales them); the time a check leaves unused passes to the checks after it, so the
CIFAR-10 comparison, last, gets at least its share whatever the checks before it do (and, cut short,
still reports the arms that finished). Every result goes into one folder (``--out``): ``results.json``
(every check: status, seconds, figures, error), ``device_check.md`` (a section ready for
docs/RESULTS.md: the summary table, each benchmark's own table, the CIFAR-10 comparison table) and
``checks.log`` (everything the checks printed).

1. smoke: ``train`` (a Motivation pair, random condition, killed mid-run and resumed, checked against the
   uninterrupted run), ``compare`` and ``excite``, each with bfloat16 autocast, channels-last and
   ``--compile``; ``moe_kernels`` (the stacked MoE layer's ``grouped_mm`` kernel against its loop under
   bfloat16 autocast: on CUDA, torch's fused grouped GEMM);
2. timing: the benchmarks' own ``main()`` with small arguments (a benchmark that takes ``--device``
   runs on the check's device; the others on the CPU, which the table says): Excitation overhead,
   switch cost, trainer vs plain loop, MoE vs dense (``benchmarks/moe_vs_dense.py``, when present);
3. CIFAR-10: ``seeking compare`` of ResNet-20 inside ResNet-32 on all 50,000 training images (data
   kept on the GPU), classical base, classical large and motivated arms; the classical base should
   pass 85% test accuracy. The machine with the GPU gets only the repository: copy the archive into
   an ignored folder of the repository that travels with it (docs/DEVICE_CHECK.md) and give ``--data``.

    python benchmarks/device_check.py --device cuda --data .device-data/cifar10-jpeg.tar.gz --out runs/device-check
    python benchmarks/device_check.py --tiny --out /tmp/device-check     # CPU, embedded digits, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seeking import TrainConfig, train
from seeking.io import atomic_write_text, write_json
from seeking.moe import MoEFeedForward
from seeking.reporting import comparison_rows, markdown_table
from seeking.runs import SUMMARY
from seeking.training.compare import compare
from seeking.training.config import ExciteConfig
from seeking.training.engine import COMPILE_BACKEND, register_step_hook
from seeking.training.excite import compare_excitation

BENCHMARKS = Path(__file__).resolve().parent
RESULTS_JSON, MARKDOWN, LOG = "results.json", "device_check.md", "checks.log"


@dataclass
class Context:
    """What every check reads: the device, the mode, where to write, and the CIFAR-10 archive."""

    device: str
    tiny: bool
    scratch: Path  # run folders of the smoke tests and the comparison (not copied back)
    data: str | None
    cifar_epochs: int
    log: Callable[[str], None]


@dataclass
class Check:
    """One check: ``run(context)`` returns its figures (JSON values) and may add ``"markdown"``."""

    name: str
    kind: str  # smoke, timing or cifar
    run: Callable[[Context], dict[str, Any]]
    share: float  # seconds of the default budget on the GPU (a weight: see run_checks); --tiny ignores it


CHECKS: dict[str, Check] = {}


def check(name: str, kind: str, share: float) -> Callable[[Callable[[Context], dict[str, Any]]], Any]:
    """Register ``run`` as the check ``name`` (checks run in the order they are registered)."""

    def register(run: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
        CHECKS[name] = Check(name, kind, run, share)
        return run

    return register


class Skipped(Exception):
    """A check that cannot run here (no data set, no benchmark script): recorded, not a failure."""


class TimedOut(BaseException):
    """A check ran past its time box. A ``BaseException``, as ``KeyboardInterrupt``: the code under
    check (torch.compile's wrappers, a trainer's error handling) must not catch and re-wrap it.
    ``figures``: what the check had finished (a check may catch it, add them and raise it again)."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


@contextlib.contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Raise :class:`TimedOut` in this (the main) thread once ``seconds`` have passed (SIGALRM): Python
    code is stopped at its next bytecode; a single long kernel call ends first."""

    def expire(signum: int, frame: Any) -> None:
        raise TimedOut(f"ran past its time box of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---- 1. smoke tests: every path with bfloat16 autocast, channels-last and --compile ----

FAST = dict(amp=True, channels_last=True, compile=True)


def train_options(context: Context) -> dict[str, Any]:
    """A Motivation pair on the embedded digits, 4 steps per epoch, on the check's device."""
    return dict(
        device=context.device, train_subset=128, test_subset=60, epochs=1, batch_size=32, bn_recalibrate=2, **FAST
    )


@check("train", "smoke", share=60)
def smoke_train(context: Context) -> dict[str, Any]:
    """A motivated pair (random condition: switches at about half the steps) trained whole, then again
    killed at step 3 (after the checkpoint of step 2) and resumed: the resumed run must end on the
    uninterrupted run's weights (bit for bit on the CPU; within rounding on CUDA, whose kernels need
    not be deterministic)."""
    config = TrainConfig(**train_options(context), condition="random", p=0.5, checkpoint_every=2)
    quiet = dict(progress=False, log=context.log)
    whole = train(config, context.scratch / "train-whole", **quiet)

    class Killed(Exception):
        pass

    def kill(step: int, loss: torch.Tensor) -> None:
        if step == 3:
            raise Killed

    handle = register_step_hook(kill)
    try:
        train(config, context.scratch / "train-resumed", **quiet)
        raise AssertionError("the run was not killed at step 3")
    except Killed:
        pass
    finally:
        handle.remove()
    resumed = train(config, context.scratch / "train-resumed", resume=True, **quiet)
    difference = max_weight_difference(whole.run_dir, resumed.run_dir)
    limit = 0.0 if context.device == "cpu" else 1e-2
    if difference > limit:
        raise AssertionError(f"the resumed run's weights differ from the uninterrupted run's by {difference:.3g}")
    summary = whole.summary
    accuracy = {role: m["accuracy"] for role, m in summary["models"].items()}
    return {"switches": summary["switches"], "resume_max_difference": difference, "accuracy": accuracy}


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between the saved models of two run folders."""
    from safetensors.torch import load_file

    largest = 0.0
    for path in sorted(a.glob("*.safetensors")):
        mine, theirs = load_file(path), load_file(b / path.name)
        if mine.keys() != theirs.keys():
            raise AssertionError(f"{path.name}: the saved tensors' names differ")
        for key, tensor in mine.items():
            largest = max(largest, (tensor.double() - theirs[key].double()).abs().max().item())
    return largest


@check("compare", "smoke", share=40)
def smoke_compare(context: Context) -> dict[str, Any]:
    options = dict(train_options(context), train_subset=64, k=1)
    result = compare(TrainConfig(**options), context.scratch / "compare", random_control=False, progress=False)
    return {"arms": [row["arm"] for row in result["rows"]]}


@check("excite", "smoke", share=40)
def smoke_excite(context: Context) -> dict[str, Any]:
    config = ExciteConfig(
        device=context.device, steps=4, eval_every_steps=2, batch_size=64, seeds=[0], arms=["none", "zero_sum"], **FAST
    )
    result = compare_excitation(config, context.scratch / "excite", log=context.log, progress=False)
    # on CUDA the device's time of each step (engine.EventClock), not only its launches
    steps_ms = {run["arm"]: run["optimizer_step_ms"] for run in result["runs"]}
    return {"arms": [run["arm"] for run in result["runs"]], "metric": result["metric"], "optimizer_step_ms": steps_ms}


@check("moe_kernels", "smoke", share=10)
def smoke_moe_kernels(context: Context) -> dict[str, Any]:
    """The stacked MoE layer under bfloat16 autocast, kernel ``grouped_mm`` against ``loop`` (each expert
    on its slice: the reference): the same output and gradients within bfloat16 rounding, and zero
    gradients for the experts that got no token. On CUDA this is torch's fused grouped GEMM, which no
    other check reaches (the benchmarks' MoE layers run in float32, where torch loops over the groups)."""
    torch.manual_seed(0)
    layer = MoEFeedForward(64, 128, 16, 2).to(context.device)
    x = torch.randn(6, 64, device=context.device)  # 12 assignments: at least 4 of the 16 experts get none
    weights = torch.randn(6, 64, device=context.device)  # the loss's weights: a gradient other than ones
    results = {}
    for kernel in ("loop", "grouped_mm"):
        layer.kernel, inputs = kernel, x.clone().requires_grad_()
        layer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(context.device).type, dtype=torch.bfloat16):
            out = layer(inputs)
        (out.float() * weights).sum().backward()
        tensors = [out, inputs.grad, layer.w1.grad, layer.w2.grad, layer.router.gate.weight.grad]
        results[kernel] = [t.detach().double().cpu() for t in tensors]
    unused = (layer.last_counts == 0).cpu()
    names = ["output", "input grad", "w1 grad", "w2 grad", "gate grad"]
    difference = {
        name: ((a - b).abs().max() / b.abs().max()).item()
        for name, a, b in zip(names, results["grouped_mm"], results["loop"], strict=True)
    }
    figures = {"experts_without_tokens": int(unused.sum()), "max_relative_difference": difference}
    if not unused.any():
        raise AssertionError(f"every expert got a token: nothing checks the empty groups ({figures})")
    for kernel, tensors in results.items():
        if any(grad[unused].abs().max() > 0 for grad in tensors[2:4]):
            raise AssertionError(f"kernel {kernel}: an expert that got no token has a nonzero gradient ({figures})")
    if max(difference.values()) > 2e-2:  # bfloat16 rounds to 2^-8 relative: the kernels round in other orders
        raise AssertionError(f"grouped_mm and loop differ by more than bfloat16 rounding: {figures}")
    return figures


# ---- 2. timing: the benchmarks' own scripts, with small arguments ----


def benchmark(name: str, script: str, tiny: list[str], full: list[str], share: float) -> None:
    """Register the benchmark ``benchmarks/<script>`` as a timing check: its ``main()`` runs with
    ``tiny`` or ``full`` as its arguments (plus ``--device`` where it takes one); what it prints (its
    markdown table) is the check's figure."""

    def run(context: Context) -> dict[str, Any]:
        path = BENCHMARKS / script
        if not path.exists():
            raise Skipped(f"benchmarks/{script} is not in this tree")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        on_device = "--device" in module_help(module)
        argv = [*(tiny if context.tiny else full), *(["--device", context.device] if on_device else [])]
        where = context.device if on_device else "cpu (the script takes no --device)"
        printed = io.StringIO()

        def figures(cut: str = "") -> dict[str, Any]:
            output = printed.getvalue()
            return {
                "argv": argv,
                "ran_on": where,
                "markdown": f"`{script} {' '.join(argv)}`, on {where}{cut}:\n\n{output}",
            }

        saved, threads = sys.argv, torch.get_num_threads()
        sys.argv = [str(path), *argv]
        try:
            with contextlib.redirect_stdout(printed):
                module.main()
        except TimedOut as exc:  # the rows it printed before its box ran out are figures too
            raise TimedOut(str(exc), figures(" (cut short: the rows it finished)")) from None
        except SystemExit as exc:  # argparse's exit, or the script's own: a failed check, not the end of the run
            raise RuntimeError(f"{script} exited with {exc.code!r}") from None
        finally:  # a benchmark may pin one thread for its timings: the later checks get them all back
            sys.argv = saved
            torch.set_num_threads(threads)
            context.log(printed.getvalue())  # what it printed, a failure's or a time-out's included
        return figures()

    check(name, "timing", share)(run)


def module_help(module: Any) -> str:
    """What ``main()`` prints for ``--help`` (its options)."""
    printed, saved = io.StringIO(), sys.argv
    sys.argv = ["help", "--help"]
    try:
        with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
            module.main()
    finally:
        sys.argv = saved
    return printed.getvalue()


benchmark(
    "excitation_overhead",
    "excitation_overhead.py",
    tiny=[
        *["--experts", "4", "--width", "16", "--depth", "1", "--batch", "2", "--block", "8", "--storage", "stacked"],
        *["--optimizers", "adamw", "--repeats", "1", "--train-repeats", "1"],
    ],
    full=["--repeats", "10", "--train-repeats", "6"],
    share=45,
)
benchmark(
    "moe_vs_dense",
    "moe_vs_dense.py",
    tiny=[
        "--dim",
        "32",
        "--hidden",
        "64",
        "--experts",
        "4",
        "--tokens",
        "64",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--gemms",
    ],
    full=["--gemms"],
    share=20,
)
benchmark(
    "switch_cost",
    "switch_cost.py",
    tiny=["--batch-size", "4", "--switches", "3", "--steps", "2", "--pairs", "resnet20 -> resnet32"],
    full=["--pairs", "resnet20 -> resnet32", "timm resnet18 -> resnet34", "timm efficientnet_b0 -> b2"],
    share=25,
)
benchmark(
    "trainer_overhead",
    "trainer_overhead.py",
    tiny=["--epochs", "1", "--batch-size", "512", "--repeats", "1", "--micro-calls", "3", "--no-profile"],
    full=["--epochs", "2", "--repeats", "3", "--no-profile", "--compile"],
    share=40,
)


# ---- 3. one full-data CIFAR-10 comparison ----


@check("cifar10_resnet20_in_resnet32", "cifar", share=190)
def cifar(context: Context) -> dict[str, Any]:
    """ResNet-20 inside ResNet-32 on all of CIFAR-10 (``--tiny``: digits, one epoch), data on the device."""
    if context.tiny:
        options = dict(data="digits", epochs=1, train_subset=128, test_subset=60, batch_size=64)
    elif context.data is None or not Path(context.data).exists():
        raise Skipped(
            f"no CIFAR-10 archive at {context.data!r}: copy cifar10-jpeg.tar.gz into the repository's ignored "
            ".device-data/ folder, carry it, and give --data (docs/DEVICE_CHECK.md)"
        )
    else:
        options = dict(data=context.data, epochs=context.cifar_epochs, batch_size=256, lr=0.1, eval_every_epochs=0)
    config = TrainConfig(
        **options, device=context.device, amp=True, channels_last=True, k=2, schedule="onecycle", bn_recalibrate=20
    )
    shown = {k: v for k, v in dataclasses.asdict(config).items() if k in (*options, "amp", "channels_last")}
    out = context.scratch / "cifar"
    try:
        compare(config, out, random_control=False, progress=False, log=context.log)
    except TimedOut as exc:  # the arms that finished are figures too: the classical base trains first
        raise TimedOut(str(exc), {"config": shown, **finished_arms(out)}) from None
    return {"config": shown, **finished_arms(out), "markdown": (out / "comparison.md").read_text()}


def finished_arms(out: Path) -> dict[str, Any]:
    """The arms of a ``compare`` (finished or not) that wrote their summary, the classical base's test
    accuracy (%) read from its summary, and their rows as a table; empty when the classical base
    itself did not finish."""
    summaries = {path.parent.name: json.loads(path.read_text()) for path in sorted(out.glob(f"*/{SUMMARY}"))}
    if "classical_base" not in summaries:
        return {}
    rows = comparison_rows(summaries)
    return {
        "classical_base_accuracy": summaries["classical_base"]["models"]["base"]["accuracy"],
        "arms": [row["arm"] for row in rows],
        "markdown": "Unfinished comparison: the arms that finished.\n\n" + markdown_table(rows),
    }


# ---- the run ----


def run_checks(context: Context, checks: list[Check], budget_s: float) -> dict[str, Any]:
    """Run ``checks`` in order within the run's ``budget_s``; returns each one's record.

    Check ``i`` must end by the run's start plus ``budget_s * (share_0 + ... + share_i) / (all shares)``:
    its box is its share of the budget plus what the checks before it left unused, and a check that
    hangs costs the later ones nothing. ``--tiny``: every check may use all that is left (a CPU shared
    with other work runs at any speed)."""
    started = time.perf_counter()
    total = sum(entry.share for entry in checks)
    scheduled = 0.0
    records = {}
    for entry in checks:
        name = entry.name
        scheduled += entry.share
        now = time.perf_counter() - started
        box = budget_s - now if context.tiny else budget_s * scheduled / total - now
        context.log(f"== {name} ({entry.kind}, time box {box:.0f} s)")
        tick = time.perf_counter()
        record: dict[str, Any] = {"kind": entry.kind, "time_box_s": box}
        try:
            if box <= 0:
                raise TimedOut("no time left in the run's budget")
            with time_box(box):
                record |= {"status": "ok", **entry.run(context)}
        except Skipped as exc:
            record |= {"status": "skipped", "error": str(exc)}
        except TimedOut as exc:
            record |= {**exc.figures, "status": "timed out", "error": str(exc)}
        except Exception as exc:  # one check's failure is recorded; the others still run
            record |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            context.log(traceback.format_exc())
        record["seconds"] = time.perf_counter() - tick
        context.log(f"== {name}: {record['status']} in {record['seconds']:.1f} s")
        records[name] = record
    return records


def markdown(records: dict[str, Any], header: str) -> str:
    """The section for docs/RESULTS.md: the summary table, then each check's own table."""
    lines = [header, "", "| check | kind | status | seconds | figures |", "|---|---|---|---|---|"]
    for name, r in records.items():
        figures = {k: v for k, v in r.items() if k not in ("kind", "status", "seconds", "markdown", "time_box_s")}
        shown = r.get("error") or json.dumps(figures)[:200]
        lines.append(f"| {name} | {r['kind']} | {r['status']} | {r['seconds']:.1f} | {shown} |")
    for name, r in records.items():
        if "markdown" in r:
            lines += ["", f"### {name}", "", r["markdown"].strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the folder for results.json, device_check.md and checks.log")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--data", help="CIFAR-10: the cifar10-jpeg.tar.gz archive (or a CIFAR-10 python folder)")
    parser.add_argument("--tiny", action="store_true", help="CPU, embedded digits, tiny sizes: seconds")
    parser.add_argument("--cifar-epochs", type=int, default=30)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=sum(entry.share for entry in CHECKS.values()),
        help="the whole run's seconds (default: the checks' shares, %(default).0f s: the issue's 8 minutes, less "
        "margin); every check's share scales with it",
    )
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS), metavar="CHECK")
    args = parser.parse_args(argv)
    if not args.budget_s > 0:  # NaN included
        parser.error(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
    if len(set(args.only)) < len(args.only):
        parser.error(f"--only names a check more than once: {' '.join(args.only)}")
    device = "cpu" if args.tiny else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here: give --device cpu, or --tiny")
    if args.tiny and COMPILE_BACKEND not in os.environ:
        # inductor builds C++ for every graph on a CPU (a minute for ResNet-20); aot_eager traces the
        # same graphs without generating code
        os.environ[COMPILE_BACKEND] = "aot_eager"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logged = io.StringIO()

    def log(line: str) -> None:
        logged.write(line.rstrip("\n") + "\n")
        print(line, file=sys.stderr, flush=True)

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    header = (
        f"## Device check ({time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}"
        f"{', --tiny' if args.tiny else ''}; compile backend {os.environ.get(COMPILE_BACKEND, 'inductor')})"
    )
    with tempfile.TemporaryDirectory() as scratch:
        context = Context(device, args.tiny, Path(scratch), args.data, args.cifar_epochs, log)
        records = run_checks(context, [CHECKS[name] for name in args.only], args.budget_s)
    write_json(out / RESULTS_JSON, {"device": name, "torch": torch.__version__, "tiny": args.tiny, "checks": records})
    atomic_write_text(out / MARKDOWN, markdown(records, header))
    atomic_write_text(out / LOG, logged.getvalue())
    failed = [n for n, r in records.items() if r["status"] in ("failed", "timed out")]
    print(markdown(records, header))
    print(f"results in {out}: {RESULTS_JSON}, {MARKDOWN}, {LOG}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
