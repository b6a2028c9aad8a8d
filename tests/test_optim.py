"""The optimizer and schedule registries: every entry builds, the formulas are the closed forms,
an unknown name lists the choices, and a new entry is one registration (config and CLI follow)."""

import math

import pytest
import torch

from seeking import ConfigError, TrainConfig
from seeking.cli.main import build_parser
from seeking.training.config import ExciteConfig
from seeking.training.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_factor, register_schedule

# what each registered optimizer must be, with the keywords PyTorch must have received
EXPECTED = {
    "sgd": (torch.optim.SGD, {"momentum": 0.5, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.5, "nesterov": True}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
    "rmsprop": (torch.optim.RMSprop, {"momentum": 0.5}),
    "adagrad": (torch.optim.Adagrad, {}),
}


def test_the_registry_holds_the_closed_set():
    assert list(OPTIMIZERS) == list(EXPECTED)
    assert list(SCHEDULES) == ["cosine", "onecycle", "constant"]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_builds_with_its_keywords_and_steps(name):
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer(name, [weight], lr=0.1, momentum=0.5, weight_decay=0.01)
    kind, keywords = EXPECTED[name]
    group = optimizer.param_groups[0]
    assert type(optimizer) is kind and group["lr"] == 0.1 and group["weight_decay"] == 0.01
    assert {k: group[k] for k in keywords} == keywords
    weight.sum().backward()
    optimizer.step()
    assert (weight < 1).all()


def test_nesterov_is_what_train_built_before_bit_for_bit():
    torch.manual_seed(0)
    start = torch.randn(5, 4)
    batches = [torch.randn(8, 5) for _ in range(4)]
    weights = []
    for build in (
        lambda p: build_optimizer("nesterov", p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    ):
        weight = torch.nn.Parameter(start.clone())
        optimizer = build([weight])
        for x in batches:
            optimizer.zero_grad()
            (x @ weight).square().mean().backward()
            optimizer.step()
        weights.append(weight.detach())
    assert torch.equal(*weights)
    # PyTorch refuses Nesterov without momentum: at momentum 0 it is plain SGD, as train always did
    plain = build_optimizer("nesterov", [torch.nn.Parameter(start)], lr=0.1, momentum=0.0, weight_decay=0.0)
    assert plain.param_groups[0]["nesterov"] is False


def _half_cosine(done: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * done))


@pytest.mark.parametrize(
    "schedule,step,total,warmup,expected",
    [
        # cosine: (step + 1) / warmup during warmup, then 0.5 (1 + cos(pi (step - warmup) / (total - warmup)))
        ("cosine", 0, 100, 10, 1 / 10),
        ("cosine", 9, 100, 10, 10 / 10),
        ("cosine", 10, 100, 10, 1.0),
        ("cosine", 55, 100, 10, _half_cosine(45 / 90)),
        ("cosine", 73, 100, 10, _half_cosine(63 / 90)),
        ("cosine", 100, 100, 10, 0.0),
        ("cosine", 130, 100, 10, 0.0),  # past the end: stays at 0
        ("cosine", 0, 100, 0, 1.0),
        # onecycle: warmup over int(0.3 total) steps from 0.04, whatever warmup is given, then the cosine
        ("onecycle", 0, 100, 10, 0.04),
        ("onecycle", 15, 100, 10, 0.04 + 0.96 * 15 / 30),
        ("onecycle", 30, 100, 10, 1.0),
        ("onecycle", 65, 100, 0, _half_cosine(35 / 70)),
        ("onecycle", 0, 2, 0, 0.04),  # int(0.6) = 0 warmup steps: at least one
        ("onecycle", 1, 2, 0, 1.0),
        # constant: the same warmup, then 1
        ("constant", 0, 100, 4, 1 / 4),
        ("constant", 3, 100, 4, 1.0),
        ("constant", 99, 100, 4, 1.0),
        ("constant", 0, 100, 0, 1.0),
    ],
)
def test_lr_factor_is_the_closed_form(schedule, step, total, warmup, expected):
    assert lr_factor(schedule, step, total, warmup) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_unknown_names_are_refused_with_the_choices():
    params = [torch.nn.Parameter(torch.ones(1))]
    with pytest.raises(ConfigError, match=r"^unknown optimizer 'lamb'; choose one of: sgd, nesterov, adam, adamw, "):
        build_optimizer("lamb", params, lr=0.1, momentum=0.0, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"^unknown schedule 'linear'; choose one of: cosine, onecycle, constant$"):
        lr_factor("linear", 0, 10, 0)
    for config in (TrainConfig(optimizer="lamb"), ExciteConfig(optimizer="lamb")):
        with pytest.raises(ConfigError, match=r"^unknown optimizer 'lamb'; choose one of: sgd, nesterov"):
            config.validate()
    with pytest.raises(ConfigError, match=r"^unknown schedule 'linear'; choose one of: cosine, onecycle, constant$"):
        ExciteConfig(schedule="linear").validate()
    with pytest.raises(ValueError, match="registered twice"):
        register_schedule("cosine")(lambda step, total, warmup: 1.0)


def test_a_new_schedule_is_one_registration():
    @register_schedule("halved")
    def halved(step: int, total: int, warmup: int) -> float:
        return 0.5

    try:
        assert lr_factor("halved", 3, 10, 0) == 0.5
        assert TrainConfig(schedule="halved").validate().schedule == "halved"
        for command in ("train", "excite"):
            assert build_parser().parse_args([command, "--schedule", "halved"]).schedule == "halved"
    finally:
        del SCHEDULES["halved"]
