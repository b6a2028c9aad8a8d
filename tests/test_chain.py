"""Chains of nested models (issue 18, part 2): a two-level chain is the Motivator, the lazy syncs of
a three-level chain keep what syncing every level after every step keeps, and a resumed chain
continues bit for bit."""

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import Crash, assert_same_run, crash_at, write_words

from seeking import Chain, ConsecutiveDecrease, Motivator, TrainConfig, load_model
from seeking.cli.main import main
from seeking.errors import ConfigError
from seeking.flops import gpt_train_flops_per_token
from seeking.models.cifar_resnet import CifarResNet
from seeking.motivation import Condition
from seeking.training import train as run_training
from seeking.training.tasks import TextModeling

pytestmark = pytest.mark.usefixtures("one_thread")

DEPTHS = (8, 14, 20)  # each contains the one before: 1, 2, 3 blocks a stage


def levels(n=3, seed=0):
    models = []
    for i, depth in enumerate(DEPTHS[:n]):
        torch.manual_seed(seed + i)
        models.append(CifarResNet(depth=depth, num_classes=10, in_channels=3))
    return models


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def batches(n):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(n)]


def train(plan, data):
    """Train one model per batch as the plan says; the levels (or roles' first letters) it chose."""
    chosen = []
    for x, y in data:
        model, optimizer = plan.select()
        chosen.append(str(plan.names.index(plan.active)) if hasattr(plan, "names") else plan.active[0])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        plan.observe(loss)
    return "".join(chosen)


def tensors(models):
    return {f"{i}.{k}": v.clone() for i, m in enumerate(models) for k, v in m.state_dict().items()}


def momenta(models, optimizers):
    return {
        f"{i}.{name}": o.state[p]["momentum_buffer"].clone()
        for i, (m, o) in enumerate(zip(models, optimizers, strict=True))
        for name, p in m.named_parameters()
        if p in o.state
    }


def assert_same(first, second):
    assert first.keys() == second.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []


def test_a_two_level_chain_is_the_motivator_bit_for_bit():
    data = batches(16)
    base, large = levels(2)
    motivator = Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large), example_input=data[0][0])
    expected = train(motivator, data)
    motivator.finish()
    assert "m" in expected and "b" in expected  # both models trained

    models = levels(2)
    optimizers = [sgd(m) for m in models]
    chain = Chain(models, [ConsecutiveDecrease(k=1)], optimizers, example_input=data[0][0])
    assert train(chain, data) == expected.replace("b", "0").replace("m", "1")
    chain.finish()
    assert_same(tensors(models), tensors(motivator.models.values()))
    assert_same(momenta(models, optimizers), momenta(motivator.models.values(), motivator.optimizers.values()))
    assert chain.pairs[0].state_dict() == motivator.state_dict()
    assert (chain.steps, chain.motivated_steps, chain.switches) == (16, motivator.motivated_steps, motivator.switches)


class Script(Condition):
    """Fires as a fixed script says, one character per observed loss (a test's own condition)."""

    def __init__(self, script):
        super().__init__()
        self.script, self.seen = script, 0
        self.motivated = script[0] == "1"

    def update(self, loss):
        self.seen += 1
        self.motivated = self.script[self.seen % len(self.script)] == "1"


SCRIPTS = ("0011101100", "1101000110")  # climb conditions of pairs (0, 1) and (1, 2)


@pytest.mark.parametrize("sync", ["copy", "share"])
def test_lazy_syncs_keep_what_syncing_every_level_after_every_step_keeps(sync):
    """The chain syncs only along the path of a move; the reference syncs every level from the one
    that stepped, after every step, with the weight maps alone: the weights and momenta must agree."""
    data = batches(20)
    models = levels()
    optimizers = [sgd(m) for m in models]
    chain = Chain(models, [Script(s) for s in SCRIPTS], optimizers, sync=sync, example_input=data[0][0])
    path = train(chain, data)
    chain.finish()
    steps = [int(c) for c in path]
    assert set(steps) == {0, 1, 2} and any(abs(a - b) == 2 for a, b in itertools.pairwise(steps))  # jumps too
    assert chain.level_steps == [steps.count(level) for level in range(3)]
    assert chain.level_p == pytest.approx([steps.count(level) / 20 for level in range(3)])
    # each pair saw its own two levels' steps only
    assert [pair.steps for pair in chain.pairs] == [sum(s in (i, i + 1) for s in steps) for i in range(2)]
    if sync == "share":  # a weight every level has is one storage, the top model's
        assert models[0].conv1.weight.data_ptr() == models[2].conv1.weight.data_ptr()

    reference = levels()
    ref_optimizers = [sgd(m) for m in reference]
    maps = [pair.map for pair in Chain(reference, [Script("0"), Script("0")], ref_optimizers).pairs]  # the start
    for (x, y), level in zip(data, steps, strict=True):
        loss = F.cross_entropy(reference[level](x), y)
        ref_optimizers[level].zero_grad()
        loss.backward()
        ref_optimizers[level].step()
        moves = [(i, "to_base") for i in reversed(range(level))] + [(i, "to_motivated") for i in range(level, 2)]
        for i, direction in moves:
            maps[i].copy(reference[i], reference[i + 1], direction, buffers=False)
            src, dst = (i, i + 1) if direction == "to_motivated" else (i + 1, i)
            maps[i].carry_optimizer_state(
                ref_optimizers[src], ref_optimizers[dst], reference[i], reference[i + 1], direction
            )
    assert_same(tensors(models), tensors(reference))
    assert_same(momenta(models, optimizers), momenta(reference, ref_optimizers))


def test_a_chain_built_with_state_resumes_bit_for_bit():
    data = batches(24)
    models = levels()
    whole = Chain(models, [ConsecutiveDecrease(k=1), ConsecutiveDecrease(k=1)], [sgd(m) for m in models])
    expected = train(whole, data)
    whole.finish()
    assert set(expected) == {"0", "1", "2"}

    models = levels()
    first = Chain(models, [ConsecutiveDecrease(k=1), ConsecutiveDecrease(k=1)], [sgd(m) for m in models])
    head = train(first, data[:13])
    saved = copy.deepcopy(
        {"models": tensors(models), "optimizer": first.optimizer.state_dict(), "chain": first.state_dict()}
    )

    models = levels(seed=7)
    for i, model in enumerate(models):
        model.load_state_dict({k.split(".", 1)[1]: v for k, v in saved["models"].items() if k.startswith(f"{i}.")})
    restored = tensors(models)
    resumed = Chain(
        models, [ConsecutiveDecrease(k=1), ConsecutiveDecrease(k=1)], [sgd(m) for m in models], state=saved["chain"]
    )
    assert_same(restored, tensors(models))  # nothing initialised or copied over restored weights
    resumed.optimizer.load_state_dict(saved["optimizer"])
    assert head + train(resumed, data[13:]) == expected
    resumed.finish()
    assert_same(tensors(models), tensors(whole.models.values()))
    assert resumed.state_dict() == whole.state_dict()


def test_what_is_not_a_chain_is_refused_before_anything_is_copied():
    models = levels()
    optimizers = [sgd(m) for m in models]
    before = tensors(models)
    shared = ConsecutiveDecrease()
    for args, message in [
        ((models[:1], [], optimizers[:1]), "at least two models"),
        ((models, [ConsecutiveDecrease()], optimizers), "needs 2 conditions"),
        ((models, [shared, shared], optimizers), "its own condition object"),
        # out of order: the first adjacent pair named by position and role, the order by size as the fix
        (
            ([models[1], models[0], models[2]], [ConsecutiveDecrease(), ConsecutiveDecrease()], optimizers),
            r"level 0 base \(\d[\d,]* parameters\) is not smaller than level 1 level1 .*by size, level1:base:motivated",
        ),
        # two levels of one size: said as such, and the fix keeps one of them
        (
            ([models[0], levels(seed=1)[0], models[2]], [ConsecutiveDecrease(), ConsecutiveDecrease()], optimizers),
            r"level 0 base and level 1 level1 have as many parameters \(\d[\d,]*\): give them by size, "
            r"base:motivated \(one model of each size\)",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            Chain(*args)
    assert_same(before, tensors(models))
    for condition in ("random", "budget"):  # an exact count of the run's steps: a chain's pairs see only their own
        with pytest.raises(ConfigError, match=f"the {condition} condition .* not built for chains"):
            chain = {"base": "resnet20", "intermediate": ["resnet32"], "motivated": "resnet56"}
            TrainConfig(**chain, condition=condition).validate()


def test_a_chain_out_of_order_is_refused_naming_the_pair_and_the_order(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--train-subset", "64", "--test-subset", "20", "--epochs", "1", "--out", str(out), "--quiet"]
    assert main(["train", "--chain", "resnet20:resnet44:resnet32", *argv]) == 2
    error = capsys.readouterr().err
    sizes = {depth: sum(p.numel() for p in CifarResNet(depth=depth, in_channels=1).parameters()) for depth in (44, 32)}
    assert f"level 1 resnet44 ({sizes[44]:,} parameters) is not smaller than level 2 resnet32 ({sizes[32]:,})" in error
    assert "give them by size, resnet20:resnet32:resnet44" in error and "motivated" not in error
    assert error.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    "chain, problem, fix",
    [
        ("resnet20:resnet20:resnet32", "resnet20 is given twice, as levels 0 and 1", "resnet20:resnet32 (one model"),
        ("resnet20:resnet32:resnet32", "resnet32 is given twice, as levels 1 and 2", "resnet20:resnet32 (one model"),
        ("resnet20:resnet20:resnet20", "resnet20 is given twice, as levels 0 and 1", "models of different sizes"),
    ],
)
def test_a_model_given_twice_in_a_chain_is_refused_with_a_fix_that_differs_from_it(
    chain, problem, fix, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["--train-subset", "64", "--test-subset", "20", "--epochs", "1", "--out", str(out), "--quiet"]
    assert main(["train", "--chain", chain, *argv]) == 2
    error = capsys.readouterr().err
    assert problem in error and fix in error and f"by size, {chain}" not in error
    assert error.count("\n") == 1 and not out.exists()


# --- chains in seeking train / compare: a GPT 2 -> 4 -> 8 layers on a tiny text ---

WIDTH = 16
CHAIN = ["gpt_2l", "gpt_4l", "gpt_8l"]
KWARGS = dict(
    model_kwargs={"width": WIDTH},
    block_size=8,
    batch_size=4,
    epochs=1,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=0.0,
    warmup_epochs=0.2,
    k=1,
)
TINY = ["--model-kwargs", '{"width": 16}', "--block-size", "8", "--batch-size", "4", "--epochs", "1"]
TINY += ["--optimizer", "adamw", "--lr", "3e-3", "--weight-decay", "0", "--warmup-epochs", "0.2", "--k", "1"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    return write_words(tmp_path_factory.mktemp("text") / "play.txt", 640)  # 18 steps of 4 x 8 characters


def test_compare_of_a_chain_reports_every_level_against_its_classical_twin(text_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--chain", ":".join(CHAIN), "--data", str(text_file), *TINY, "--out", str(out)]) == 0
    printed, errors = capsys.readouterr()
    assert "warning: the random control is not built for chains" in errors
    result = json.loads((out / "comparison.json").read_text())
    rows = {r["arm"]: r for r in result["rows"]}
    levels = ("base", "level1", "large")
    assert list(rows) == [f"classical {n}" for n in levels] + [f"motivated {n}" for n in levels]
    assert (
        [rows[f"motivated {n}"]["model"] for n in levels] == [rows[f"classical {n}"]["model"] for n in levels] == CHAIN
    )
    assert not (out / "random_control").exists()

    data = TextModeling(str(text_file), batch_size=4, block_size=8, device=torch.device("cpu"))
    per_step = {  # the closed form, per step of 4 x 8 tokens
        name: gpt_train_flops_per_token(depth, WIDTH, data.text.vocab_size, 8) * 4 * 8
        for name, depth in zip(CHAIN, (2, 4, 8), strict=True)
    }
    chain = json.loads((out / "motivated" / "summary.json").read_text())
    steps = [json.loads(line)["model"] for line in (out / "motivated" / "steps.jsonl").read_text().splitlines()]
    counts = {role: steps.count(role) for role in ("base", "level1", "motivated")}
    assert chain["steps_by_model"] == counts and all(counts.values()) and len(steps) == data.steps_per_epoch()
    assert chain["p_by_model"] == {role: n / len(steps) for role, n in counts.items()}
    assert chain["motivated_steps"] == counts["level1"] + counts["motivated"]
    # each row shows its own level's share and count of steps, labelled so (not the run's p above the base)
    for level, role in zip(levels, counts, strict=True):
        assert (rows[f"motivated {level}"]["level p"], rows[f"motivated {level}"]["level steps"]) == (
            counts[role] / len(steps),
            counts[role],
        )
        assert (rows[f"classical {level}"]["level p"], rows[f"classical {level}"]["level steps"]) == (1.0, len(steps))
        assert "p" not in rows[f"motivated {level}"] and "large steps" not in rows[f"motivated {level}"]
    shares = ", ".join(f"{role} {n / len(steps):.3f}" for role, n in counts.items())
    page = (out / "report" / "report.html").read_text()
    assert f"p above the base = {chain['p']:.3f} (fraction of the trained steps on a level above the base; " in page
    assert f"p by level: {shares})" in page
    by_role = dict(zip(counts, CHAIN, strict=True))
    assert chain["train_flops_by_model"] == {role: per_step[by_role[role]] * n for role, n in counts.items()}
    last = json.loads((out / "motivated" / "epochs.jsonl").read_text().splitlines()[-1])
    assert [last[f"p_{role}"] for role in counts] == list(chain["p_by_model"].values())
    for role, record in chain["models"].items():  # every level saved, loadable alone, scoring what was reported
        model, meta = load_model(out / "motivated" / record["checkpoint"])
        assert meta["model"] == by_role[role]
        assert data.evaluate(model)[0]["loss"] == pytest.approx(record["loss"], abs=1e-6)
    twins = [json.loads((out / f"classical_{n}" / "summary.json").read_text()) for n in levels]
    assert [next(iter(t["models"].values()))["model"] for t in twins] == CHAIN
    assert [t["train_flops"] for t in twins] == [per_step[name] * len(steps) for name in CHAIN]
    saving = sum(t["train_flops"] for t in twins) / chain["train_flops"]
    assert f"({saving:.2f}x the chain)" in result["chain"] and result["chain"] in printed


def test_a_chain_run_prints_p_by_level_against_its_counted_steps(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--chain", ":".join(CHAIN), "--data", str(text_file), *TINY, "--out", str(out)]) == 0
    printed, log = capsys.readouterr()
    steps = [json.loads(line)["model"] for line in (out / "steps.jsonl").read_text().splitlines()]
    counts = {role: steps.count(role) for role in ("base", "level1", "motivated")}
    above, n = counts["level1"] + counts["motivated"], len(steps)
    assert all(counts.values())
    assert f"p above the base = {above / n:.3f} ({above}/{n} steps above the base, " in printed
    by_level = ", ".join(f"{role} {c / n:.3f} ({c}/{n})" for role, c in counts.items())
    assert f"p by level (its share of the steps): {by_level}\n" in printed
    assert f"p above the base {above / n:.2f}  p_base {counts['base'] / n:.2f}" in log  # the epoch's line


def test_a_chain_run_that_dies_resumes_bit_for_bit(text_file, tmp_path, inject):
    config = TrainConfig(
        data=str(text_file), base=CHAIN[0], intermediate=CHAIN[1:-1], motivated=CHAIN[-1], **KWARGS, checkpoint_every=5
    )
    quiet = dict(progress=False, log=lambda line: None)
    reference = run_training(config, tmp_path / "reference", **quiet)
    assert all(reference.summary["steps_by_model"].values())  # every level trained
    inject(crash_at(12))
    with pytest.raises(Crash):
        run_training(config, tmp_path / "run", **quiet)
    inject.undo()
    run_training(config, tmp_path / "run", resume=True, **quiet)
    assert_same_run(reference.run_dir, tmp_path / "run")
