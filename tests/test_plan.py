"""The plan a training loop drives (``seeking.motivation.TrainingPlan``): the Motivator for two models,
``SingleModel`` for classical training of one."""

import pytest
import torch
import torch.nn.functional as F
from helpers import sgd

from seeking import ConfigError, create_model
from seeking.motivation import ConsecutiveDecrease, Motivator, SingleModel, TrainingPlan


def tiny_pair():
    torch.manual_seed(0)
    kwargs = dict(num_classes=3, in_channels=1, image_size=[4, 4])
    return create_model("resnet20", **kwargs), create_model("resnet32", **kwargs)


def drive(plan, losses):
    """The loop's use of a plan: select, step, observe; returns the role each step trained."""
    x, y = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1])
    trained = []
    for scripted in losses:
        model, optimizer = plan.select()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        trained.append(plan.active)
        plan.observe(scripted)
    plan.finish()
    return trained


def test_the_motivator_and_single_model_are_training_plans():
    base, large = tiny_pair()
    motivator = Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large))
    single = SingleModel("base", base, sgd(base))
    assert isinstance(motivator, TrainingPlan) and isinstance(single, TrainingPlan)
    assert not isinstance(object(), TrainingPlan)
    # the Protocol's counters mean the same in both: the Motivator's, counted from the roles it trained
    trained = drive(motivator, [3.0, 2.0, 1.0, 1.5, 1.0])
    assert trained == ["base", "base", "motivated", "motivated", "base"]
    assert (motivator.steps, motivator.motivated_steps, motivator.switches) == (5, 2, 2)
    assert motivator.p == pytest.approx(2 / 5)


@pytest.mark.parametrize("role", ["base", "motivated"])
def test_single_model_trains_its_one_model_and_its_counters_round_trip(role):
    base, _ = tiny_pair()
    optimizer = sgd(base)
    single = SingleModel(role, base, optimizer)
    assert single.p == 0.0 and single.select() == (base, optimizer)
    before = [p.detach().clone() for p in base.parameters()]
    assert drive(single, [3.0, 2.0, 1.0]) == [role] * 3
    assert not all(map(torch.equal, base.parameters(), before))  # its optimizer stepped its model
    expected_motivated = 3 if role == "motivated" else 0
    assert (single.steps, single.motivated_steps, single.switches) == (3, expected_motivated, 0)
    assert single.p == expected_motivated / 3
    resumed = SingleModel(role, base, optimizer)
    resumed.load_state_dict(single.state_dict())
    assert (resumed.steps, resumed.motivated_steps, resumed.p) == (3, expected_motivated, single.p)
    drive(resumed, [1.0])
    assert (resumed.steps, resumed.motivated_steps) == (4, expected_motivated * 4 // 3)


def test_single_model_refuses_an_unknown_role():
    base, _ = tiny_pair()
    with pytest.raises(ConfigError, match="unknown role 'large'; the roles are base, motivated"):
        SingleModel("large", base, sgd(base))
