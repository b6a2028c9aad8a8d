"""Motivation with Excitation: a GPT-MoE base inside a deeper (or wider-in-experts) GPT-MoE, both trained
with Excitation. Each step's factors come from that step's batch on the model that trains, an expert of
the base keeps its identity in the motivated model, and the run resumes bit for bit."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from helpers import Crash, assert_same_run, crash_at

from seeking import Excitation, TrainConfig, train
from seeking.errors import SeekingWarning
from seeking.model_file import load_model
from seeking.models import create_model, lm_loss
from seeking.moe import expert_layers, moe_aux_loss
from seeking.motivation import ConsecutiveDecrease, Motivator
from seeking.reporting.report import write_report

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(progress=False, log=lambda line: None)
SIZES = dict(vocab_size=13, block_size=8, width=16, num_experts=4)


def excited(model):
    return Excitation(torch.optim.AdamW(model.parameters(), lr=3e-3), model, "zero_sum")


def test_each_step_is_scaled_by_its_own_batch_and_experts_keep_their_identity():
    torch.manual_seed(0)
    base = create_model("gpt_moe_tiny", depth=2, **SIZES)
    large = create_model("gpt_moe_tiny", depth=4, **SIZES)
    optimizers = {"base": excited(base), "motivated": excited(large)}
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 13, (4, 9), generator=gen) for _ in range(14)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeekingWarning)  # the deeper MoE starts exact
        motivator = Motivator(
            base, large, ConsecutiveDecrease(k=1), *optimizers.values(), example_input=batches[0][:2, :8]
        )
    roles = set()
    for tokens in batches:
        model, optimizer = motivator.select()
        role = motivator.active
        roles.add(role)
        other = large if model is base else base
        # nothing is left in the idle model's counts: its next step will be scaled by its own batch alone
        assert all(int(layer.expert_counts.sum()) == 0 for layer in expert_layers(other))
        # the same step, on an independent copy with a fresh Excitation: the same weights after it
        twin = copy.deepcopy(model)
        twin_optimizer = excited(twin)
        twin_optimizer.load_state_dict(copy.deepcopy(optimizers[role].state_dict()))  # load_state_dict keeps tensors
        for net, opt in ((model, optimizer), (twin, twin_optimizer)):
            loss = lm_loss(net(tokens[:, :-1]), tokens[:, 1:])
            opt.zero_grad()
            (loss + moe_aux_loss(net)).backward()
            opt.step()
        for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q), name
        motivator.observe(loss)
    assert roles == {"base", "motivated"}
    motivator.finish()
    # the base's experts are the motivated model's first-two-blocks experts, one identity each
    for small, big in zip(expert_layers(base), expert_layers(large)[:2], strict=True):
        assert torch.equal(small.w1, big.w1) and torch.equal(small.w2, big.w2)


def test_added_experts_map_expert_k_to_expert_k():
    """Growth in experts (4 -> 8): expert k of the base is expert k of the motivated model at every switch;
    the start cannot be exact (the router's added rows take tokens), which the Motivator warns about."""
    torch.manual_seed(0)
    base = create_model("gpt_moe_tiny", depth=2, **SIZES)
    large = create_model("gpt_moe_tiny", depth=2, **{**SIZES, "num_experts": 8})
    tokens = torch.randint(0, 13, (4, 9))
    with pytest.warns(SeekingWarning, match="does not start as the base's function"):
        motivator = Motivator(
            base, large, ConsecutiveDecrease(k=1), excited(base), excited(large), example_input=tokens[:2, :8]
        )
    for _ in range(6):
        model, optimizer = motivator.select()
        loss = lm_loss(model(tokens[:, :-1]), tokens[:, 1:])
        optimizer.zero_grad()
        (loss + moe_aux_loss(model)).backward()
        optimizer.step()
        motivator.observe(loss)
    motivator.finish()
    for small, big in zip(expert_layers(base), expert_layers(large), strict=True):
        assert torch.equal(big.w1[:4], small.w1) and torch.equal(big.w2[:4], small.w2)
        assert torch.equal(big.router.gate.weight[:4], small.router.gate.weight)


def text(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("the quick brown fox jumps over the lazy dog, " * 40, encoding="utf-8")
    return path


def config(tmp_path, **changes):
    fields = dict(
        data=str(text(tmp_path)),
        base="gpt_moe_2l",
        motivated="gpt_moe_4l",
        model_kwargs={"width": 16, "num_experts": 4},
        excitation="zero_sum",
        block_size=8,
        batch_size=4,
        epochs=2,
        optimizer="adamw",
        lr=3e-3,
        k=1,
        checkpoint_every=5,
    )
    return TrainConfig(**{**fields, **changes})


def test_a_motivated_moe_run_with_excitation_saves_usable_models_and_resumes_bit_for_bit(tmp_path, inject):
    whole = train(config(tmp_path), tmp_path / "whole", **QUIET)
    summary = json.loads((whole.run_dir / "summary.json").read_text())
    assert 0 < summary["motivated_steps"] < summary["steps"]
    for record in summary["models"].values():
        model, _ = load_model(whole.run_dir / record["checkpoint"])
        assert expert_layers(model)
    inject(crash_at(7))
    with pytest.raises(Crash):
        train(config(tmp_path), tmp_path / "cut", **QUIET)
    inject.undo()
    train(config(tmp_path), tmp_path / "cut", resume=True, **QUIET)
    assert_same_run(whole.run_dir, tmp_path / "cut")
    # Excitation changed the run: the same run without it trains other weights
    plain = train(config(tmp_path, excitation="none"), tmp_path / "plain", **QUIET)
    plain_summary = json.loads((plain.run_dir / "summary.json").read_text())
    assert plain_summary["models"] != summary["models"]
    # the summary and the report tell the Excitation run from the plain one
    gamma = config(tmp_path).gamma
    assert (summary["excitation"], summary["gamma"]) == ("zero_sum", gamma)
    assert (plain_summary["excitation"], plain_summary["gamma"]) == ("none", None)
    page = write_report([whole.run_dir, plain.run_dir], tmp_path / "report").files[-1].read_text()
    title = "gpt_moe_2l inside gpt_moe_4l, condition decrease"
    assert f"{whole.run_dir}: {title}, excitation zero_sum (gamma {gamma})</h2>" in page
    assert f"{plain.run_dir}: {title}</h2>" in page
