"""Excitation under Hugging Face's Trainer (seeking.integrations.hf_trainer): CPU, no download."""

import re
from pathlib import Path

import accelerate.optimizer
import pytest
import torch
import transformers
from toy_moe import ToyMoE, examples

from seeking.errors import ConfigError, SeekingWarning
from seeking.excitation import get_strategy
from seeking.integrations.hf_trainer import ExcitationCallback, excite_trainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations" / "hf_trainer.md"


def arguments(tmp_path, **overrides) -> transformers.TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    return transformers.TrainingArguments(**{**settings, **overrides})


class FactorRecorder(transformers.TrainerCallback):
    """Every optimizer step's factors, read from the Excitation after the step."""

    def __init__(self, excitation_callback: ExcitationCallback) -> None:
        self.source = excitation_callback
        self.factors: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.factors.append(self.source.excitation.last_factors[0].clone())


def excited(model, args, strategy="zero_sum", **options):
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples(32))
    callback = excite_trainer(trainer, strategy, **options)
    recorder = FactorRecorder(callback)
    trainer.add_callback(recorder)
    return trainer, callback, recorder


def zero_sum(counts: torch.Tensor) -> torch.Tensor:
    return get_strategy("zero_sum")(counts / counts.sum(), 1.0, torch.Generator())


def test_accumulation_counts_both_micro_batches(tmp_path):
    model = ToyMoE()
    trainer, _, recorder = excited(model, arguments(tmp_path, gradient_accumulation_steps=2, max_steps=3))
    trainer.train()
    assert len(model.routed) == 6 and len(recorder.factors) == 3
    for step, factors in enumerate(recorder.factors):
        first, second = model.routed[2 * step], model.routed[2 * step + 1]
        torch.testing.assert_close(factors, zero_sum(first + second), rtol=0, atol=0)
    # the check can tell: one micro-batch's counts alone give other factors
    assert any(not torch.equal(f, zero_sum(model.routed[2 * s + 1])) for s, f in enumerate(recorder.factors))
    # the logs carry the routing metrics of the latest forward and the last factors
    log = trainer.state.log_history[0]
    assert log["excitation/layer0/factor_min"] == pytest.approx(float(recorder.factors[0].min()))
    assert log["excitation/skipped_steps"] == 0
    assert 0 <= log["routing/dead_fraction"] <= 1 and "routing/layer0/load_entropy" in log


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])  # the scaler skips step(); the fused step
def test_a_step_the_grad_scaler_skips_discards_its_counts(tmp_path, optim):
    model = ToyMoE()
    model.poison_at = 1  # the second step's only forward: a non-finite gradient
    trainer, callback, recorder = excited(model, arguments(tmp_path, max_steps=3, max_grad_norm=0, optim=optim))
    # Accelerate's GradScaler (fp16 AMP on a GPU), here on the CPU: it skips the step, as on a GPU
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    trainer.train()
    assert callback._guard.skipped == 1
    assert [log["excitation/skipped_steps"] for log in trainer.state.log_history[:3]] == [0, 1, 1]
    # the step after the skip scales by its own batch alone, not by the skipped one's too
    torch.testing.assert_close(recorder.factors[2], zero_sum(model.routed[2]), rtol=0, atol=0)
    assert not torch.equal(recorder.factors[2], zero_sum(model.routed[1] + model.routed[2]))


def test_the_weight_decay_groups_and_optimizer_are_trainers_own(tmp_path):
    args = arguments(tmp_path, weight_decay=0.1, adam_beta1=0.8, optim="adamw_torch")

    def groups(trainer):
        optimizer = trainer.create_optimizer()
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        settings = [
            ({names[id(p)] for p in g["params"]}, {k: v for k, v in g.items() if k != "params"})
            for g in optimizer.param_groups
        ]
        return optimizer, settings

    plain, plain_groups = groups(transformers.Trainer(model=ToyMoE(), args=args))
    trainer = transformers.Trainer(model=ToyMoE(), args=args)
    callback = excite_trainer(trainer)
    optimizer, excited_groups = groups(trainer)
    assert callback.excitation.optimizer is optimizer and type(optimizer) is type(plain)
    assert excited_groups == plain_groups
    # a new optimizer (as model_init's trials make) is excited in place of the old one, which steps plainly
    trainer.optimizer = None
    again = trainer.create_optimizer()
    assert callback.excitation.optimizer is again and not optimizer._optimizer_step_post_hooks
    assert plain_groups[1][0] == {"embed.bias", "norm.weight", "norm.bias", "head.bias"}
    assert [s["weight_decay"] for _, s in plain_groups] == [0.1, 0.0] and plain_groups[0][1]["betas"] == (0.8, 0.999)


def test_the_counts_are_kept_out_of_ddp_buffer_broadcast(tmp_path):
    """Accelerate wraps the model in DDP at train() on several processes: its per-forward broadcast of
    rank 0's buffers must not reach the counts, which Excitation sums over the processes itself."""
    trainer = transformers.Trainer(model=ToyMoE(), args=arguments(tmp_path))
    excite_trainer(trainer)
    counting = {n for n, _ in trainer.model.named_buffers() if n.endswith(("expert_counts", "last_counts"))}
    assert counting and counting <= set(trainer.model._ddp_params_and_buffers_to_ignore)


def test_a_checkpoint_resumes_the_same_run(tmp_path, monkeypatch):
    # On a GPU, Accelerate moves the optimizer's state dict to the device when it wraps the optimizer, and
    # Trainer loads a checkpoint's with map_location=device: the generator state then is no CPU ByteTensor.
    # Here another dtype stands for the move (torch's set_state refuses both).
    moves = []

    def move_to_device(state, device):
        moves.append(device)
        return {**state, "excitation": {**state["excitation"], "generator": state["excitation"]["generator"].long()}}

    monkeypatch.setattr(accelerate.optimizer, "move_to_device", move_to_device)

    def run(output_dir, resume=None):
        args = arguments(output_dir, max_steps=4, save_strategy="steps", save_steps=2)
        trainer, callback, _ = excited(ToyMoE(), args, strategy="random", seed=3)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model, callback.excitation

    whole, whole_excitation = run(tmp_path / "whole")
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert saved["excitation"]["strategy"] == "random"
    saved["excitation"]["generator"] = saved["excitation"]["generator"].long()
    torch.save(saved, checkpoint / "optimizer.pt")
    resumed, resumed_excitation = run(tmp_path / "resumed", resume=str(checkpoint))
    assert len(moves) == 2
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(whole_excitation.generator.get_state(), resumed_excitation.generator.get_state())


def test_refusals(tmp_path):
    trainer = transformers.Trainer(model=ToyMoE(), args=arguments(tmp_path))
    with pytest.raises(ConfigError, match="strategy"):
        excite_trainer(trainer, "no_such_strategy")
    excite_trainer(trainer)
    with pytest.raises(ConfigError, match="already called"):
        excite_trainer(trainer)
    # an optimizer that Trainer's create_optimizer did not build (as under DeepSpeed) is refused at train()
    elsewhere = transformers.Trainer(model=ToyMoE(), args=arguments(tmp_path, max_steps=1), train_dataset=examples(4))
    excite_trainer(elsewhere)
    elsewhere.create_optimizer = lambda model=None: setattr(
        elsewhere, "optimizer", torch.optim.SGD(elsewhere.model.parameters())
    )
    with pytest.raises(ConfigError, match="not built by its create_optimizer"):
        elsewhere.train()
    plain = transformers.Trainer(model=torch.nn.Linear(2, 2), args=arguments(tmp_path))
    excite_trainer(plain)
    with pytest.raises(ConfigError, match="no MoE layer"):
        plain.create_optimizer()


@pytest.mark.parametrize("given", ["optimizers", "optimizer_cls_and_kwargs"])
def test_an_optimizer_given_to_trainer_is_the_one_excited(tmp_path, given):
    model = ToyMoE()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    way = {"optimizers": (sgd, None), "optimizer_cls_and_kwargs": (torch.optim.SGD, {"lr": 0.1})}[given]
    trainer = transformers.Trainer(
        model=model, args=arguments(tmp_path, max_steps=1), train_dataset=examples(8), **{given: way}
    )
    callback = excite_trainer(trainer)
    trainer.train()
    optimizer = callback.excitation.optimizer
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.1
    assert optimizer is sgd or given == "optimizer_cls_and_kwargs"
    torch.testing.assert_close(callback.excitation.last_factors[0], zero_sum(model.routed[0]), rtol=0, atol=0)


def test_the_docs_lines_run_as_written(tmp_path):
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    model = ToyMoE()
    namespace = {"Trainer": transformers.Trainer, "model": model, "train_dataset": examples(8)}
    namespace["args"] = arguments(tmp_path, max_steps=2)
    exec(compile(block, str(DOC), "exec"), namespace)
    (callback,) = [c for c in namespace["trainer"].callback_handler.callbacks if isinstance(c, ExcitationCallback)]
    assert callback.excitation.strategy == "zero_sum" and len(model.routed) == 2
    torch.testing.assert_close(callback.excitation.last_factors[0], zero_sum(model.routed[1]), rtol=0, atol=0)


def test_a_layer_without_last_counts_logs_its_factors_only():
    class Counted(torch.nn.Module):  # the Excitation protocol alone: no last_counts for the metrics
        num_experts = 2

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2, 3))
            self.register_buffer("expert_counts", torch.zeros(2))

        def expert_parameters(self):
            yield self.w, None

    layer = Counted()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    callback = ExcitationCallback()
    with pytest.warns(SeekingWarning, match="routing metrics are not logged"):
        callback.attach(optimizer, layer)
    layer.expert_counts += torch.tensor([3.0, 1.0])
    layer.w.sum().backward()
    optimizer.step()
    # zero_sum: u = (3/4, 1/4), factors u_k / mean(u) = (1.5, 0.5) (docs/EXCITATION.md, Strategies)
    assert callback.metrics(layer) == pytest.approx(
        {"excitation/layer0/factor_min": 0.5, "excitation/layer0/factor_max": 1.5, "excitation/skipped_steps": 0.0}
    )


class CountsBeforeStep(transformers.TrainerCallback):
    """Each layer's accumulated counts just before each optimizer step."""

    def __init__(self, layers) -> None:
        self.layers, self.counts = layers, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.counts.append([layer.expert_counts.clone() for layer in self.layers])


def test_a_tiny_hugging_face_moe_model_end_to_end(tmp_path):
    # needs seeking.integrations.transformers (the "hf" helper's, on main since 53a554b)
    from seeking.integrations.transformers import causal_lm, excitable, tiny_config

    torch.manual_seed(0)
    model = causal_lm(tiny_config("olmoe", vocab_size=32, max_positions=16))
    layers = excitable(model)
    lengths = [8, 5, 3, 6, 8, 2, 7, 4]  # right padding to 8 tokens
    g = torch.Generator().manual_seed(0)
    data = []
    for n in lengths:
        ids = torch.randint(0, 32, (8,), generator=g)
        mask = (torch.arange(8) < n).long()
        data.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    valid = []  # the valid tokens of each training forward, from the mask the model is called with
    model.register_forward_pre_hook(
        lambda m, args, kwargs: valid.append(int(kwargs["attention_mask"].sum())) if m.training else None,
        with_kwargs=True,
    )
    args = arguments(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    callback = excite_trainer(trainer)
    before = CountsBeforeStep(layers)
    trainer.add_callback(before)
    trainer.train()
    k = model.config.num_experts_per_tok
    assert len(valid) == 4 and len(before.counts) == 2
    for step, counts in enumerate(before.counts):
        for layer_counts in counts:  # both micro-batches' valid tokens, k assignments each; no padding
            assert float(layer_counts.sum()) == k * (valid[2 * step] + valid[2 * step + 1])
    # the last step's factors are those of its counts, per layer
    for counts, factors in zip(before.counts[-1], callback.excitation.last_factors, strict=True):
        torch.testing.assert_close(factors, zero_sum(counts), rtol=0, atol=0)
    log = trainer.state.log_history[-2]  # the last step's log (the last is train()'s summary)
    assert {"routing/layer1/load_entropy", "excitation/layer1/factor_max"} <= log.keys()
