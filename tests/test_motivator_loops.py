"""The Motivator in a user's own loop: the loss averaged over processes (2 gloo processes), and a
construction path that keeps restored weights (resume bit for bit)."""

import copy
import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import run_processes

from seeking import ConsecutiveDecrease, Motivator, create_model

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 24
WORLD = 2


def pair(seed=0):
    torch.manual_seed(seed)
    kwargs = dict(num_classes=10, in_channels=3, image_size=[8, 8])
    return create_model("resnet20", **kwargs), create_model("resnet32", **kwargs)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def local_losses(rank):
    """Each process's own losses: noisy, so that local decisions differ between processes."""
    return torch.rand(STEPS, generator=torch.Generator().manual_seed(100 + rank)) + torch.linspace(2, 1, STEPS)


def decisions(motivator, losses):
    """The model each step trains, when the step's loss is the scripted one (no forward pass needed)."""
    chosen = []
    for loss in losses:
        motivator.select()
        chosen.append(motivator.active[0])
        motivator.observe(loss)
    return "".join(chosen)


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        base, large = pair()
        losses = local_losses(rank)
        kept = losses.clone()
        averaged = decisions(Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large)), losses)
        assert torch.equal(losses, kept)  # the all-reduce works on a copy: the caller's losses stay its own
        local = decisions(
            Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large), average_loss=False), losses
        )
        torch.save({"averaged": averaged, "local": local}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_processes_take_the_decisions_of_the_mean_loss(tmp_path):
    run_processes(_worker, str(tmp_path / "init"), str(tmp_path), timeout=60)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    # what one process decides from the mean of the two losses (summed in float32, divided on the host)
    mean = [float(a + b) / 2 for a, b in zip(local_losses(0), local_losses(1), strict=True)]
    base, large = pair()
    alone = decisions(Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large)), mean)
    assert ranks[0]["averaged"] == ranks[1]["averaged"] == alone
    assert "m" in alone and "b" in alone
    # the control: on their local losses the two processes would have trained different models
    assert ranks[0]["local"] != ranks[1]["local"]


def batches(n):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(n)]


def train(motivator, data):
    chosen = []
    for x, y in data:
        model, optimizer = motivator.select()
        chosen.append(motivator.active[0])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        motivator.observe(loss)
    return "".join(chosen)


def tensors(*models):
    return {f"{i}.{k}": v.clone() for i, m in enumerate(models) for k, v in m.state_dict().items()}


def changed(before, after):
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_a_motivator_built_with_state_resumes_bit_for_bit():
    data = batches(12)
    base, large = pair()
    whole = Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large))
    expected = train(whole, data)
    whole.finish()
    assert "m" in expected and "b" in expected

    base, large = pair()
    first = Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large))
    head = train(first, data[:7])
    # a checkpoint: copies, as a file would hold
    saved = copy.deepcopy(
        {"models": tensors(base, large), "optimizer": first.optimizer.state_dict(), "motivator": first.state_dict()}
    )

    # a framework builds other models and restores the checkpoint into them, then the Motivator
    base, large = pair(seed=5)
    for i, model in enumerate((base, large)):
        model.load_state_dict({k.split(".", 1)[1]: v for k, v in saved["models"].items() if k.startswith(f"{i}.")})
    restored = tensors(base, large)
    optimizers = sgd(base), sgd(large)
    resumed = Motivator(base, large, ConsecutiveDecrease(k=1), *optimizers, state=saved["motivator"])
    assert changed(restored, tensors(base, large)) == []  # every restored tensor kept
    resumed.optimizer.load_state_dict(saved["optimizer"])
    assert head + train(resumed, data[7:]) == expected
    resumed.finish()
    assert changed(tensors(*whole.models.values()), tensors(base, large)) == []

    # the control: the ordinary construction over restored weights changes the motivated model's
    trained = tensors(base, large)
    Motivator(base, large, ConsecutiveDecrease(k=1), *optimizers)
    overwritten = changed(trained, tensors(base, large))
    assert overwritten and all(name.startswith("1.") for name in overwritten)
