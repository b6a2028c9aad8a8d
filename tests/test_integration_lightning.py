"""Excitation under Lightning (seeking.integrations.lightning), with docs/integrations/lightning.md's module."""

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from toy_moe import ToyMoE, examples

from seeking import Excitation
from seeking.errors import ConfigError
from seeking.excitation import get_strategy
from seeking.integrations.lightning import ExcitationCallback

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
