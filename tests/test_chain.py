"""Chains of nested models (issue 18, part 2): a two-level chain is the Motivator, the lazy syncs of
a three-level chain keep what syncing every level after every step keeps, and a resumed chain
continues bit for bit."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from seeking import Chain, ConsecutiveDecrease, Motivator
from seeking.models.cifar_resnet import CifarResNet
from seeking.motivation import Condition

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
        chosen.append(plan.active[-1] if plan.active.startswith("level") else plan.active[0])
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
