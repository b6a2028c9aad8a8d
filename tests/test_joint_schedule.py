"""One learning-rate schedule for both models in the user's own loop: any PyTorch scheduler over
``motivator.optimizer`` sets both optimizers' groups on one clock, without PyTorch's order warning."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR

from seeking import ConsecutiveDecrease, Motivator, create_model

STEPS, LR = 12, 0.1


def pair(sync="share"):
    torch.manual_seed(0)
    kwargs = dict(num_classes=10, in_channels=3, image_size=[8, 8])
    base, large = create_model("resnet20", **kwargs), create_model("resnet32", **kwargs)
    optimizers = [torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9) for m in (base, large)]
    return Motivator(base, large, ConsecutiveDecrease(k=1), *optimizers, sync=sync)


def user_loop(motivator, schedulers, losses):
    """The README's loop, with ``scheduler.step()`` after each batch; scripted losses force switches.
    Returns, per step, the lr and momentum of every group of both optimizers after the scheduler stepped,
    and the warnings raised."""
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for scripted in losses:
            model, optimizer = motivator.select()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            motivator.observe(scripted)
            for scheduler in schedulers:
                scheduler.step()
            groups = [g for o in motivator.optimizers.values() for g in o.param_groups]
            seen.append([(g["lr"], g["momentum"]) for g in groups])
    return seen, [str(w.message) for w in caught]


LOSSES = [3.0, 4.0, 3.0, 2.0, 1.0, 1.5, 1.0, 0.5, 0.6, 0.4, 0.3, 0.2]  # base first: the large optimizer idles


def test_one_cosine_schedule_sets_both_optimizers_on_one_clock_without_warning():
    motivator = pair()
    seen, caught = user_loop(motivator, [CosineAnnealingLR(motivator.optimizer, T_max=STEPS)], LOSSES)
    assert not [m for m in caught if "lr_scheduler" in m], caught
    assert 0 < motivator.motivated_steps < STEPS  # both models trained, at different steps
    for step, groups in enumerate(seen, start=1):  # closed form of cosine annealing, after `step` steps
        expected = LR * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        assert all(lr == pytest.approx(expected, abs=1e-12) for lr, _ in groups), (step, groups)


def test_one_cycle_drives_both_optimizers_momentum_too():
    motivator = pair()
    scheduler = OneCycleLR(motivator.optimizer, max_lr=LR, total_steps=STEPS + 1)
    seen, caught = user_loop(motivator, [scheduler], LOSSES)
    assert not [m for m in caught if "lr_scheduler" in m], caught
    assert all(len(set(groups)) == 1 for groups in seen)  # every group of both optimizers alike at each step
    assert len({groups[0] for groups in seen}) == STEPS  # and the schedule moves


def test_a_scheduler_per_optimizer_warns_which_is_why_the_joint_one_exists():
    motivator = pair()  # control: the naive way trips PyTorch's check (the large optimizer has not stepped)
    schedulers = [CosineAnnealingLR(o, T_max=STEPS) for o in motivator.optimizers.values()]
    _, caught = user_loop(motivator, schedulers, LOSSES)
    assert any("lr_scheduler.step()` before `optimizer.step()`" in m for m in caught)


def test_the_joint_optimizer_steps_only_the_active_model_and_holds_both_states():
    motivator = pair(sync="copy")  # zero-copy sharing would move the shared weights of both models
    model, optimizer = motivator.select()
    assert model is motivator.models["base"] and optimizer is motivator.optimizer
    large_before = [p.clone() for p in motivator.models["motivated"].parameters()]
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(large_before, motivator.models["motivated"].parameters(), strict=True))
    state = optimizer.state_dict()
    assert set(state) == {"base", "motivated"} and state["base"]["state"] and not state["motivated"]["state"]
    optimizer.zero_grad()
    assert all(p.grad is None for m in motivator.models.values() for p in m.parameters())


def test_the_joint_optimizer_follows_optimizers_whose_state_was_loaded():
    # loading a state (as a resumed run does) replaces an optimizer's group dicts: the joint one must see the new ones
    motivator, saved = pair(), pair()
    for name, optimizer in motivator.optimizers.items():
        optimizer.load_state_dict(saved.optimizers[name].state_dict())
    for group in motivator.optimizer.param_groups:
        group["lr"] = 0.125
    assert all(g["lr"] == 0.125 for o in motivator.optimizers.values() for g in o.param_groups)
