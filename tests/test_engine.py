"""The training engine on a toy task: the same arithmetic as a hand-written loop, exact resume,
skipped steps, and a checkpoint that holds exactly the declared parts."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import Crash, crash_at, poisoning
from torch import nn

from seeking.motivation import SingleModel
from seeking.training.checkpoint import Checkpoints, load_state
from seeking.training.engine import Counters, Engine, JsonLog, LearningRate, Parts
from seeking.training.optim import lr_factor

STEPS, PERIOD, LR = 12, 5, 0.1


def toy_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(96, 6, generator=gen), torch.randint(0, 3, (96,), generator=gen)


class Stream:
    """Batches of 8 in a fixed cycle: a Stateful data part."""

    def __init__(self):
        self.x, self.y = toy_data()
        self.position = 0

    def __next__(self):
        i = self.position % 12
        self.position += 1
        return self.x[8 * i : 8 * i + 8], self.y[8 * i : 8 * i + 8]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class ToyTask:
    name = None

    def __init__(self, log_path=None):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9)
        self.plan = SingleModel("base", self.model, self.optimizer)
        self.nets = {"base": self.model}
        self.stream = Stream()
        self.log = JsonLog(log_path)
        self.periods, self.skipped = [], 0

    def parts(self):
        return Parts(model=self.model, optimizer=self.optimizer, plan=self.plan, data=self.stream, log=self.log)

    def next_batch(self):
        return next(self.stream)

    def loss(self, net, model, x, y):
        loss = F.cross_entropy(net(x), y)
        return loss, loss

    def skip(self):
        self.skipped += 1

    def after_step(self, step, role, loss, lr, finite):
        self.log.write({"step": step, "loss": loss if finite else None, "lr": lr})

    def end_period(self, counters: Counters):
        self.periods.append((counters.step, counters.mean_loss))
        return {}


def engine_for(task, folder=None):
    checkpoints = Checkpoints(folder, keep=1) if folder else None
    return Engine(
        task,
        LearningRate(LR, "cosine", STEPS, 2),
        period=PERIOD,
        device=torch.device("cpu"),
        checkpoints=checkpoints,
        checkpoint_every=3,
        identity={"toy": 1},
        max_nonfinite=3,
    )


def by_hand():
    """The loop the engine must equal, written out: lr per step, forward, backward, step."""
    task = ToyTask()
    losses = []
    for step in range(STEPS):
        x, y = next(task.stream)
        for group in task.optimizer.param_groups:
            group["lr"] = LR * lr_factor("cosine", step, STEPS, 2)
        loss = F.cross_entropy(task.model(x), y)
        task.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        task.optimizer.step()
        losses.append(loss.item())
    return task.model, losses


def test_the_engine_computes_what_the_hand_written_loop_computes():
    model, losses = by_hand()
    task = ToyTask()
    counters = engine_for(task).run()
    for a, b in zip(model.parameters(), task.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert counters.step == STEPS and counters.skipped == 0 and task.plan.steps == STEPS
    # periods end every PERIOD steps and at the last one, each with the mean loss of its own steps
    assert [step for step, _ in task.periods] == [5, 10, 12]
    assert task.periods[1][1] == pytest.approx(sum(losses[5:10]) / 5, rel=1e-6)


def test_a_run_killed_at_any_step_resumes_bit_for_bit(tmp_path, inject):
    reference = ToyTask(tmp_path / "reference.jsonl")
    reference.log.open()
    engine_for(reference, tmp_path / "ref").run()
    reference.log.close()
    for crash in (2, 7, 11):
        folder, log = tmp_path / f"run{crash}", tmp_path / f"run{crash}.jsonl"
        task = ToyTask(log)
        task.log.open()
        inject(crash_at(crash))
        with pytest.raises(Crash):
            engine_for(task, folder).run()
        inject.undo()
        task.log.close()
        resumed = ToyTask(log)
        engine = engine_for(resumed, folder)
        assert engine.resume() == (crash >= 3)  # the first checkpoint comes after step 3
        resumed.log.open()
        engine.run()
        resumed.log.close()
        for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
            assert torch.equal(a, b)
        assert log.read_text() == (tmp_path / "reference.jsonl").read_text()  # each step logged once


def test_a_checkpoint_holds_exactly_the_declared_parts(tmp_path):
    task = ToyTask()
    engine_for(task, tmp_path / "checkpoints").run()
    state = load_state(Checkpoints(tmp_path / "checkpoints").paths()[-1])
    assert set(state) == {"seeking_version", "config", *task.parts(), "progress", "rng"}
    assert state["progress"]["step"] == STEPS and state["plan"] == task.plan.state_dict()


def test_a_poisoned_step_is_skipped_and_a_run_of_them_stops(inject):
    clean, poisoned = ToyTask(), ToyTask()
    engine_for(clean).run()
    inject(poisoning({4}))
    counters = engine_for(poisoned).run()
    assert counters.skipped == 1 and poisoned.skipped == 1 and poisoned.plan.steps == STEPS - 1
    assert all(torch.isfinite(p).all() for p in poisoned.model.parameters())
    assert not torch.equal(clean.model[0].weight, poisoned.model[0].weight)
    inject.undo()
    inject(poisoning(range(100)))
    with pytest.raises(Exception, match="training diverged: 3 non-finite losses or gradients in a row"):
        engine_for(ToyTask()).run()


def test_a_nan_gradient_with_a_finite_loss_is_skipped():
    task = ToyTask()

    def loss(net, model, x, y):
        value = F.cross_entropy(net(x), y)
        return value, value + 0 * model[0].weight.sum() * math.inf  # finite loss, NaN gradient

    task.loss = loss
    with pytest.raises(Exception, match="diverged: 3 non-finite"):
        engine_for(task).run()
    assert task.skipped == 3 and task.plan.steps == 0
