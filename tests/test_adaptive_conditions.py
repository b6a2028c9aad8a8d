"""The conditions of issue 18: trend (a noise-aware slope test), budget (an exact share of steps or
FLOPs, placed by the loss) and value (a bandit on loss drop per FLOP)."""

import inspect
import json
import math
import random

import pytest
import scipy.stats
from helpers import Crash, assert_same_run, crash_at

from seeking import TrainConfig, train
from seeking.cli.main import main
from seeking.errors import ConfigError
from seeking.motivation import (
    BudgetController,
    ConsecutiveDecrease,
    SmoothedTrend,
    StepValue,
    make_condition,
    motivated_share,
    slope_t,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FLOPS = {"base": 965, "motivated": 1645}  # the digits pair's per-step GFLOPs (resnet20, resnet32)


def decisions(condition, losses):
    """The condition's decision after each loss (which model trains the next batch)."""
    out = []
    for loss in losses:
        condition.update(loss)
        out.append(condition.motivated)
    return out


def noise(n, seed=0):
    rng = random.Random(seed)
    return [rng.gauss(2.0, 0.1) for _ in range(n)]


def test_slope_t_is_ordinary_least_squares():
    rng = random.Random(1)
    for n in (3, 7, 20):
        losses = [rng.gauss(0, 1) - 0.05 * i for i in range(n)]
        fit = scipy.stats.linregress(range(n), losses)  # float64 reference
        assert slope_t(losses) == pytest.approx(fit.slope / fit.stderr, rel=1e-9)
    assert slope_t([3.0, 2.0, 1.0]) == -math.inf and slope_t([1.0, 1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="at least 3"):
        slope_t([1.0, 2.0])


def test_trend_fires_at_the_t_tail_rate_on_noise_not_at_the_decrease_rule_rate():
    losses = noise(20000)
    trend = sum(decisions(SmoothedTrend(window=10, z=2.0), losses)) / len(losses)
    decrease = sum(decisions(ConsecutiveDecrease(k=2), losses)) / len(losses)
    expected = scipy.stats.t.cdf(-2.0, 8)  # P(T_8 < -2) = 0.040
    assert abs(trend - expected) < 0.012, (trend, expected)
    # the paper's rule on the same noise: 1/3! entries, each episode lasting 1/(1 - 1/2) steps on average
    assert abs(decrease - 1 / 6) < 0.03 and decrease > 3 * trend
    assert sum(decisions(SmoothedTrend(window=10, z=4.0), losses)) / len(losses) < 0.005


def test_trend_fires_on_a_fall_that_stands_out_of_the_noise():
    falling = [2.0 - 0.01 * i + e - 2.0 for i, e in enumerate(noise(400, seed=3))]  # slope 0.01, noise 0.1
    fired = decisions(SmoothedTrend(window=30, z=2.0), falling)
    assert not any(fired[:29])  # the window fills first
    assert sum(fired[29:]) / len(fired[29:]) > 0.9
    condition = SmoothedTrend(window=3)
    assert decisions(condition, [3.0, 2.0, 1.0, math.nan, 0.5]) == [False, False, True, False, False]


@pytest.mark.parametrize("p", [0.0, 0.13, 0.5, 0.87, 1.0])
@pytest.mark.parametrize("shape", ["noise", "falling", "flat", "non-finite"])
def test_budget_places_exactly_its_count(p, shape):
    total = 301
    losses = {
        "noise": noise(total),
        "falling": [1.0 / (1 + i) for i in range(total)],
        "flat": [1.0] * total,
        "non-finite": [math.nan if i % 17 == 0 else x for i, x in enumerate(noise(total))],
    }[shape]
    condition = BudgetController(round(p * total), total, window=10)
    fired = [condition.motivated, *decisions(condition, losses[:-1])]  # the decision of each of the total steps
    assert sum(fired) == round(p * total)
    assert decisions(condition, [1.0, 2.0]) == [False, False]  # past the total: the base


def test_budget_spends_where_the_loss_falls():
    rng, losses, falling = random.Random(5), [], []
    for phase in range(20):  # alternating 50 steps of pure noise and 50 of a clear fall
        for i in range(50):
            losses.append(rng.gauss(0, 0.1) - (0.02 * i if phase % 2 else 0.0))
            falling.append(phase % 2 == 1)
    condition = BudgetController(250, len(losses), window=10)
    fired = [condition.motivated, *decisions(condition, losses[:-1])]
    assert sum(fired) == 250
    in_falls = sum(f for f, down in zip(fired, falling, strict=True) if down) / 250
    assert in_falls > 0.8  # a random placement puts half there


def test_flops_saving_sets_the_runs_flops_within_half_a_step():
    assert motivated_share(1.0, FLOPS) == 1.0 and motivated_share(1645 / 965, FLOPS) == pytest.approx(0.0, abs=1e-12)
    for saving in (1.1, 1.3, 1.5, 1.7):
        share = motivated_share(saving, FLOPS)
        assert share * 1645 + (1 - share) * 965 == pytest.approx(1645 / saving)
        for total in (7, 66, 1000):
            condition = make_condition(
                "budget", p=0.2, total=total, window=5, flops_saving=saving, step_flops=FLOPS, seed=0
            )
            fired = [condition.motivated, *decisions(condition, noise(total - 1))]
            flops = sum(FLOPS["motivated"] if f else FLOPS["base"] for f in fired)
            assert abs(flops - total * 1645 / saving) <= (1645 - 965) / 2
    for bad in (0.9, 1.8):
        with pytest.raises(ConfigError, match=r"flops_saving must be between 1 .* and 1\.705"):
            motivated_share(bad, FLOPS)


def falling_by_arm(condition, gains, steps, seed=0):
    """Losses of a simulated run: each step of an arm lowers the loss by its gain, plus noise."""
    rng, level, chosen = random.Random(seed), 3.0, []
    for _ in range(steps):
        arm = "motivated" if condition.motivated else "base"
        chosen.append(arm)
        condition.update(level + rng.gauss(0, 0.0002))
        level -= gains[arm]
    return chosen


@pytest.mark.parametrize("better", ["base", "motivated"])
def test_value_spends_where_a_step_buys_most_per_flop(better):
    # per FLOP: the motivated step buys 0.002 / 1645, the base's 0.001 / 965, or the motivated 0.0012 / 1645
    gains = {"base": 0.001, "motivated": 0.002 if better == "motivated" else 0.0012}
    chosen = falling_by_arm(StepValue(FLOPS, window=10, epsilon=0.1, seed=0), gains, 2000)
    share = chosen.count(better) / len(chosen)
    assert share > 0.85, share


def test_value_rewards_pairs_on_one_model_only():
    condition = StepValue({"base": 2, "motivated": 4}, window=3, epsilon=0.0)
    # base, base (pair: (5 - 4) / 2), then the unseen motivated arm twice (pair: (3 - 1) / 4)
    assert decisions(condition, [5.0, 4.0, 3.0, 1.0]) == [False, True, True, False]
    assert condition.values == {"base": 0.5, "motivated": 0.5} and condition.rewards == {"base": 1, "motivated": 1}
    decisions(condition, [2.0, 1.0])  # a switch (1 -> 2 unused), then a base pair: EMA with a = 2 / (3 + 1)
    assert condition.values["base"] == pytest.approx(0.5 + 0.5 * ((2.0 - 1.0) / 2 - 0.5))
    decisions(condition, [math.nan, 0.0])  # no reward across a non-finite loss
    assert condition.rewards["base"] == 2


CONDITIONS = {
    "trend": lambda: SmoothedTrend(window=6, z=1.0),
    "budget": lambda: BudgetController(90, 300, window=6),
    "value": lambda: StepValue(FLOPS, window=6, epsilon=0.3, seed=4),
}


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_a_restored_condition_decides_as_the_uninterrupted_one(name):
    losses = [x - 0.002 * i for i, x in enumerate(noise(300, seed=2))]
    whole = decisions(CONDITIONS[name](), losses)
    first = CONDITIONS[name]()
    part = decisions(first, losses[:137])
    resumed = CONDITIONS[name]()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as plain as a checkpoint holds it
    assert part + decisions(resumed, losses[137:]) == whole
    assert 0 < sum(whole) < len(whole)


@pytest.mark.parametrize(
    "saved,restored,message",
    [
        (SmoothedTrend(window=6), SmoothedTrend(window=7), "window=6"),
        (SmoothedTrend(z=1.0), SmoothedTrend(z=2.0), "z=1.0"),
        (BudgetController(3, 10), BudgetController(4, 10), "3 of 10 steps"),
        (StepValue(FLOPS, epsilon=0.2), StepValue(FLOPS, epsilon=0.1), "epsilon"),
    ],
)
def test_a_state_saved_with_other_settings_is_refused(saved, restored, message):
    with pytest.raises(ConfigError, match=message):
        restored.load_state_dict(saved.state_dict())


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: make_condition("trend", window=2), "at least 3 losses"),
        (lambda: make_condition("trend", zz=2), "unknown condition option"),
        (lambda: make_condition("budget", p=0.3), "needs the run's total steps"),
        (lambda: make_condition("budget", total=9, flops_saving=1.2), "needs the FLOPs"),
        (lambda: make_condition("value", total=9), "needs the FLOPs"),
        (lambda: make_condition("value", step_flops=FLOPS, epsilon=1.5), "epsilon must be in"),
        (lambda: motivated_share(1.0, {"base": 5, "motivated": 5}), "costs more"),
    ],
)
def test_bad_options_are_refused(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


FAST = ["--train-subset", "128", "--test-subset", "60", "--epochs", "1", "--batch-size", "32", "--quiet"]


@pytest.mark.parametrize(
    "options,message",
    [
        (["--condition", "trend", "--window", "2"], "window (losses in the slope window) must be >= 3"),
        (["--condition", "value", "--epsilon", "2"], "epsilon (the value condition's exploration rate)"),
        (["--condition", "budget", "--flops-saving", "0.5"], "flops_saving (the large model's FLOPs"),
        (["--condition", "budget", "--flops-saving", "3"], "flops_saving must be between 1"),
        (["--condition", "trend", "--z", "nan"], "z must be a finite number"),
    ],
)
def test_bad_condition_options_exit_2_and_write_nothing(options, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, *options, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seeking: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_an_option_the_condition_does_not_read_is_warned_about(tmp_path, capsys):
    assert main(["train", *FAST, "--condition", "trend", "--epsilon", "0.5", "--out", str(tmp_path / "r")]) == 0
    assert "--epsilon does nothing with --condition trend" in capsys.readouterr().err


TINY = dict(train_subset=128, test_subset=60, epochs=2, batch_size=32, checkpoint_every=3, window=3)
QUIET = dict(progress=False, log=lambda line: None)


def test_a_budget_run_spends_its_flops_saving_and_resumes_bit_for_bit(tmp_path, inject):
    config = TrainConfig(**TINY, condition="budget", flops_saving=1.3)
    reference = train(config, tmp_path / "reference", **QUIET)
    s = reference.summary
    large, base = s["step_flops"]["motivated"], s["step_flops"]["base"]
    assert abs(s["train_flops"] - s["steps"] * large / 1.3) <= (large - base) / 2
    assert s["motivated_steps"] == round(motivated_share(1.3, s["step_flops"]) * s["steps"])
    inject(crash_at(5))
    with pytest.raises(Crash):
        train(config, tmp_path / "run", **QUIET)
    inject.undo()
    train(config, tmp_path / "run", resume=True, **QUIET)
    assert_same_run(reference.run_dir, tmp_path / "run")


def test_a_value_run_resumes_bit_for_bit(tmp_path, inject):
    config = TrainConfig(**TINY, condition="value", epsilon=0.5)
    reference = train(config, tmp_path / "reference", **QUIET)
    assert 0 < reference.summary["motivated_steps"] < reference.summary["steps"]
    inject(crash_at(5))
    with pytest.raises(Crash):
        train(config, tmp_path / "run", **QUIET)
    inject.undo()
    train(config, tmp_path / "run", resume=True, **QUIET)
    assert_same_run(reference.run_dir, tmp_path / "run")


@pytest.mark.parametrize("cls", [SmoothedTrend, BudgetController, StepValue])
def test_the_command_lines_defaults_are_the_classes(cls):
    for name, parameter in inspect.signature(cls).parameters.items():
        if name in TrainConfig.condition_options:
            assert getattr(TrainConfig(), name) == parameter.default, name


def test_compare_refuses_a_flops_saving_out_of_range_before_any_arm_trains(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *FAST, "--condition", "budget", "--flops-saving", "3", "--out", str(out)]) == 2
    assert "flops_saving must be between 1" in capsys.readouterr().err
    assert not out.exists()
