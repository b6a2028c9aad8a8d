"""Excitation under Lightning (seeking.integrations.lightning), with docs/integrations/lightning.md's module."""

import datetime
import os
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from helpers import run_processes
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from toy_moe import ToyMoE, examples

from seeking import Excitation, create_model
from seeking.errors import ConfigError
from seeking.excitation import get_strategy
from seeking.integrations.lightning import MOTIVATOR_KEY, ExcitationCallback

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a 2-core machine

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations" / "lightning.md"


def doc_module() -> type:
    """The LightningModule of the doc's first code block, run as written."""
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    return namespace["MoEModule"]


MoEModule = doc_module()


def loader(n: int = 16) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(examples(n), batch_size=4, shuffle=False)


def trainer(callbacks=(), **settings) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ExcitationCallback(), *callbacks],
        **settings,
    )


class FactorRecorder(L.Callback):
    """Each optimizer step's factors (first layer), read after the batch that stepped."""

    def __init__(self) -> None:
        self.factors: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        excitation = getattr(pl_module, "excitation", None) or trainer.optimizers[0]
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.factors.append(excitation.last_factors[0].clone())


def zero_sum(counts: torch.Tensor) -> torch.Tensor:
    return get_strategy("zero_sum")(counts / counts.sum(), 1.0, torch.Generator())


def test_lightning_with_accumulation_equals_a_hand_written_loop():
    model = ToyMoE()
    recorder = FactorRecorder()
    trainer([recorder], max_steps=3, accumulate_grad_batches=2).fit(MoEModule(model), loader(24))
    # the same Excitation in a plain loop: the loss of each micro-batch divided by 2, as Lightning does
    hand = ToyMoE()
    optimizer = MoEModule(hand).configure_optimizers()
    batches = list(loader(24))
    for step in range(3):
        for batch in batches[2 * step : 2 * step + 2]:
            (hand(**batch)["loss"] / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
    for (name, a), b in zip(model.state_dict().items(), hand.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # each step's factors come from both micro-batches' counts, read from the router itself
    assert len(model.routed) == 6
    for step, factors in enumerate(recorder.factors):
        torch.testing.assert_close(factors, zero_sum(model.routed[2 * step] + model.routed[2 * step + 1]))
    assert any(not torch.equal(f, zero_sum(model.routed[2 * s + 1])) for s, f in enumerate(recorder.factors))


class AttachedModule(MoEModule):
    """The doc's alternative: the optimizer kept as is, Excitation attached to it."""

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        self.excitation = Excitation.attach(optimizer, self.model)
        return optimizer


class FusedModule(MoEModule):
    """A fused optimizer: the scaler calls its step with ``found_inf``, and the step changes nothing."""

    def configure_optimizers(self):
        return Excitation(torch.optim.AdamW(self.parameters(), lr=1e-2, fused=True), self.model)


@pytest.mark.parametrize("module", [MoEModule, AttachedModule, FusedModule])
def test_a_step_the_amp_scaler_skips_discards_its_counts(module):
    model = ToyMoE()
    model.poison_at = 1  # the second step's forward: a non-finite gradient, which the GradScaler skips
    recorder = FactorRecorder()
    # what precision="16-mixed" makes on a GPU; on the CPU Lightning's own has no GradScaler
    run = trainer([recorder], max_steps=3, plugins=[MixedPrecision("16-mixed", "cpu")])
    run.fit(module(model), loader())
    callback = next(c for c in run.callbacks if isinstance(c, ExcitationCallback))
    assert callback.skipped == 1
    torch.testing.assert_close(recorder.factors[2], zero_sum(model.routed[2]), rtol=0, atol=0)
    assert not torch.equal(recorder.factors[2], zero_sum(model.routed[1] + model.routed[2]))


def test_a_checkpoint_resumes_the_same_run(tmp_path):
    class RandomModule(MoEModule):
        def configure_optimizers(self):
            return Excitation(torch.optim.SGD(self.parameters(), lr=0.1), self.model, "random", seed=3)

    # at an epoch's end: Lightning itself resumes a plain DataLoader mid-epoch from the epoch's start
    whole = RandomModule(ToyMoE())
    trainer(max_epochs=2).fit(whole, loader(8))
    first = trainer(max_epochs=1)
    first.fit(RandomModule(ToyMoE()), loader(8))
    first.save_checkpoint(tmp_path / "half.ckpt")
    resumed = RandomModule(ToyMoE())
    second = trainer(max_epochs=2)
    second.fit(resumed, loader(8), ckpt_path=tmp_path / "half.ckpt")
    assert whole.trainer.global_step == second.global_step == 4
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(second.optimizers[0].generator.get_state(), whole.trainer.optimizers[0].generator.get_state())


def test_no_excitation_is_refused():
    class Plain(MoEModule):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ConfigError, match="found no Excitation"):
        trainer(max_steps=1).fit(Plain(ToyMoE()), loader())


# Motivation under Lightning: the doc's MotivationModule subclass, run as written


def doc_pair() -> type:
    """The ``Pair`` of the doc's section "Motivation under Lightning" (its first code block)."""
    section = DOC.read_text().split("# Motivation under Lightning", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    return namespace["Pair"]


Pair = doc_pair()


class RecordedPair(Pair):
    """The doc's module, recording the model of each step and its (local) loss."""

    def __init__(self, base, motivated) -> None:
        super().__init__(base, motivated)
        self.chosen, self.losses = [], []

    def training_loss(self, model, batch):
        loss = super().training_loss(model, batch)
        self.chosen.append(self.motivator.active[0])
        self.losses.append(float(loss.detach()))
        return loss


def resnet_pair(seed=0):
    torch.manual_seed(seed)
    kwargs = dict(num_classes=10, in_channels=3, image_size=[8, 8])
    return create_model("resnet20", **kwargs), create_model("resnet32", **kwargs)


def images(n: int = 24) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    )
    return torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)


def plain_trainer(**settings) -> L.Trainer:
    options = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return L.Trainer(**{**options, "enable_model_summary": False, **settings})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """The names of the tensors that differ (bit for bit) between two modules of one architecture."""
    return [
        name
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True)
        if not torch.equal(x, y)
    ]


def test_a_lightning_motivation_run_equals_a_hand_written_loop():
    module = RecordedPair(*resnet_pair())
    plain_trainer(max_epochs=2).fit(module, images())
    # the same Motivator in the README's loop, over the same batches
    hand = Pair(*resnet_pair())
    motivator = hand.configure_motivator(None)
    chosen = []
    for _ in range(2):
        for batch in images():
            model, optimizer = motivator.select()
            chosen.append(motivator.active[0])
            loss = hand.training_loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            motivator.observe(loss)
    motivator.finish()
    assert "".join(module.chosen) == "".join(chosen)
    assert "m" in chosen and "b" in chosen
    assert same_weights(module, hand) == []
    assert module.motivator.state_dict() == motivator.state_dict()


# the resumed trainer saves no checkpoint: Lightning's hint to pass the ModelCheckpoint again does not apply
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_lightning_motivation_resume_equals_the_uninterrupted_run(tmp_path):
    whole = RecordedPair(*resnet_pair())
    saving = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    plain_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saving]).fit(whole, images())
    first_epoch = next(tmp_path.glob("epoch=0-*.ckpt"))
    # other starting weights: everything the second epoch uses must come from the checkpoint
    resumed = RecordedPair(*resnet_pair(seed=7))
    plain_trainer(max_epochs=2).fit(resumed, images(), ckpt_path=first_epoch)
    assert "".join(resumed.chosen) == "".join(whole.chosen[6:])
    assert same_weights(whole, resumed) == []
    assert resumed.motivator.state_dict() == whole.motivator.state_dict()


def test_a_checkpoint_without_the_motivator_is_refused(tmp_path):
    run = plain_trainer(max_steps=1)
    run.fit(Pair(*resnet_pair()), images())
    run.save_checkpoint(tmp_path / "plain.ckpt")
    checkpoint = torch.load(tmp_path / "plain.ckpt", weights_only=False)
    del checkpoint[MOTIVATOR_KEY]
    torch.save(checkpoint, tmp_path / "plain.ckpt")
    with pytest.raises(ConfigError, match="seeking_motivator"):
        plain_trainer(max_steps=2).fit(Pair(*resnet_pair()), images(), ckpt_path=tmp_path / "plain.ckpt")


def _ddp_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    # the process group joined by a file, as Lightning finds it when processes are launched for it
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        module = RecordedPair(*resnet_pair())
        strategy = DDPStrategy(find_unused_parameters=True)  # the doc's; gloo on the CPU
        plain_trainer(max_epochs=2, devices=2, strategy=strategy).fit(module, images(48))
        # the weights: running statistics are each process's own after its last forward (DDP broadcasts
        # rank 0's before each forward)
        state = {k: v.detach().clone() for k, v in module.named_parameters()}
        torch.save({"chosen": module.chosen, "losses": module.losses, "state": state}, f"{out_dir}/rank{rank}.pt")
        # DDP that expects a gradient for every parameter is refused before any step
        with pytest.raises(ConfigError, match="find_unused_parameters=True"):
            plain_trainer(max_steps=1, devices=2, strategy=DDPStrategy()).fit(Pair(*resnet_pair()), images(48))
    finally:
        dist.destroy_process_group()


def decisions_on(losses: list[float]) -> list[str]:
    """The models the doc's Motivator, alone in one process, chooses when fed these losses."""
    motivator = Pair(*resnet_pair()).configure_motivator(None)
    chosen = []
    for loss in losses:
        motivator.select()
        chosen.append(motivator.active[0])
        motivator.observe(loss)
    return chosen


def test_two_lightning_ddp_processes_take_the_same_decisions_and_need_unused_parameters(tmp_path):
    run_processes(_ddp_worker, str(tmp_path / "init"), str(tmp_path), timeout=60)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["chosen"] == ranks[1]["chosen"]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each process trained on its own rows
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name
    # the decisions one process takes on the mean of the two local losses (float32 sum, divided on the host)
    mean = [
        float(torch.tensor(a) + torch.tensor(b)) / 2
        for a, b in zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)
    ]
    decided = decisions_on(mean)
    assert ranks[0]["chosen"] == decided
    assert "m" in decided and "b" in decided
    # the control: each process on its own loss would have trained other models
    local = [decisions_on(rank["losses"]) for rank in ranks]
    assert local[0] != local[1]


class Snapshot(L.Callback):
    """The module's tensors that differ, when training starts, from ``before``."""

    def __init__(self, before: dict[str, torch.Tensor]) -> None:
        self.before, self.changed = before, None

    def on_train_start(self, trainer, pl_module):
        self.changed = [k for k, v in pl_module.state_dict().items() if not torch.equal(v, self.before[k])]


def test_a_second_fit_continues_the_motivator():
    module = Pair(*resnet_pair())
    plain_trainer(max_epochs=1).fit(module, images())
    snapshot = Snapshot({k: v.clone() for k, v in module.state_dict().items()})
    plain_trainer(max_epochs=1, callbacks=[snapshot]).fit(module, images())
    assert snapshot.changed == []  # not initialised again
    assert module.motivator.steps == 12  # its counters went on


def test_a_strategy_that_restores_after_configure_optimizers_is_refused():
    class LateRestore(SingleDeviceStrategy):
        @property
        def restore_checkpoint_after_setup(self) -> bool:
            return True

    with pytest.raises(ConfigError, match="restores checkpoints after configure_optimizers"):
        plain_trainer(max_steps=1, strategy=LateRestore("cpu")).fit(Pair(*resnet_pair()), images())
