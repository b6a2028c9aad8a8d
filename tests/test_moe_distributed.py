"""Expert counts and Excitation's step across processes: DDP (counts kept local) and FSDP2 (DTensor
parameters), each against a single process on the same global batch; 2 gloo processes on CPU."""

import datetime
import warnings

import pytest
import torch
import torch.distributed as dist
from helpers import run_processes
from torch.nn.parallel import DistributedDataParallel

from seeking.errors import ConfigError, SeekingWarning
from seeking.excitation import Excitation
from seeking.models import create_model
from seeking.models.gpt_moe import lm_loss
from seeking.moe import expert_layers, keep_counts_local
from seeking.training.distributed import Ranks, wrap

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

WORLD = 2
# 5 experts over 2 processes: FSDP2's Shard(0) gives uneven shards (3 and 2 experts)
GPT = {"vocab_size": 13, "block_size": 6, "depth": 2, "width": 8, "heads": 2, "num_experts": 5, "mlp_ratio": 2}


def _join(rank, init_file):
    torch.set_num_threads(1)
    # a short timeout: a rank whose peer died fails fast instead of waiting 30 minutes
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )


def _gpt(storage="stacked"):
    torch.manual_seed(0)
    return create_model("gpt_moe_tiny", aux_loss_coef=0.0, storage=storage, **GPT)


def _micro_batches(steps, micro):
    """The global batches: ``[step][micro] -> (inputs, targets)``, 4 sequences each (2 per process)."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, GPT["vocab_size"], (steps, micro, 4, GPT["block_size"] + 1), generator=gen)
    return [[(t[:, :-1], t[:, 1:]) for t in step] for step in tokens]


def _rows(batch, rank):
    return tuple(t[2 * rank : 2 * rank + 2] for t in batch)


def _ddp_worker(rank, init_file, out_dir):
    _join(rank, init_file)
    try:
        (batches,) = _micro_batches(1, 2)
        for kept in (True, False):
            model = _gpt()
            # wrap() keeps the counts local; plain DDP shows what the broadcast does to them
            net = wrap(model, Ranks(rank, WORLD), torch.device("cpu")) if kept else DistributedDataParallel(model)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                optimizer = Excitation(torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9), net, "zero_sum")
            said = [str(w.message) for w in caught if issubclass(w.category, SeekingWarning)]
            assert (said == []) if kept else ("keep_counts_local(model) before" in said[0] and len(said) == 1), said
            for batch in batches:  # accumulation of 2 micro-batches, without no_sync()
                x, y = _rows(batch, rank)
                (lm_loss(net(x), y) / len(batches)).backward()
            counts = torch.stack([layer.expert_counts.clone() for layer in expert_layers(model)])
            dist.all_reduce(counts)
            optimizer.step()
            if rank == 0:
                torch.save({"counts": counts, "state": model.state_dict()}, f"{out_dir}/kept{kept}.pt")
        try:
            keep_counts_local(net)
        except ConfigError as error:
            assert "before DistributedDataParallel(model)" in str(error)
        else:
            raise AssertionError("keep_counts_local accepted a model already in DDP")
    finally:
        dist.destroy_process_group()


def _counting_into(total):
    """A forward hook on a router that adds its top-k choices per expert to ``total``."""

    def hook(module, args, routing):
        total.add_(torch.bincount(routing.indices.flatten(), minlength=total.numel()))

    return hook


def test_ddp_accumulation_without_no_sync_keeps_each_process_counts(tmp_path):
    run_processes(_ddp_worker, str(tmp_path / "init"), str(tmp_path))
    # one process on the global micro-batches; its routers' top-k choices counted by hooks
    model = _gpt()
    routed = []
    for layer in expert_layers(model):
        routed.append(torch.zeros(GPT["num_experts"]))
        layer.router.register_forward_hook(_counting_into(routed[-1]))
    optimizer = Excitation(torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), model, "zero_sum")
    (batches,) = _micro_batches(1, 2)
    for x, y in batches:
        (lm_loss(model(x), y) / len(batches)).backward()
    optimizer.step()

    kept = torch.load(tmp_path / "keptTrue.pt")
    assert torch.equal(kept["counts"], torch.stack(routed))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(kept["state"][name], value, rtol=0, atol=1e-6, msg=name)
    # without keep_counts_local, DDP's broadcast replaced rank 1's first micro-batch counts by rank 0's
    plain = torch.load(tmp_path / "keptFalse.pt")
    assert plain["counts"].sum() == kept["counts"].sum() and not torch.equal(plain["counts"], kept["counts"])


def test_keep_counts_local_names_the_counting_buffers_only():
    model = torch.nn.Sequential(_gpt(), torch.nn.BatchNorm1d(3))
    model._ddp_params_and_buffers_to_ignore = ["1.running_mean"]
    names = keep_counts_local(model)
    assert names == [f"0.blocks.{i}.moe.{b}" for i in range(2) for b in ("expert_counts", "last_counts")]
    assert sorted(model._ddp_params_and_buffers_to_ignore) == sorted([*names, "1.running_mean"])
    assert keep_counts_local(torch.nn.Linear(2, 2)) == []


MICRO = {"depth": 2, "width": 7, "sparsity": 0.5, "num_classes": 3, "in_channels": 1, "image_size": 3}


def _micro():
    torch.manual_seed(0)
    return create_model("micro_moe", **MICRO)


def _micro_batches_images(steps):
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 1, 3, 3, generator=gen), torch.randint(0, 3, (4,), generator=gen)) for _ in range(steps)]


# (model, its loss, its batches of 4 rows): 7 neurons (micro_moe's experts, dim 0 of its weight and bias) and
# 5 stacked experts (gpt_moe_tiny) are each split unevenly over 2 processes; with list storage each expert's
# own weights are sharded (by rows, not by expert) and scaled by one factor
CASES = {
    "gpt_moe_tiny": (_gpt, lm_loss, lambda: [b for (b,) in _micro_batches(3, 1)]),
    "micro_moe": (_micro, torch.nn.functional.cross_entropy, lambda: _micro_batches_images(3)),
    "gpt_moe_tiny_list": (lambda: _gpt("list"), lm_loss, lambda: [b for (b,) in _micro_batches(3, 1)]),
}
FSDP_RUNS = [
    *[(name, strategy, attach) for name in list(CASES)[:2] for strategy in ("zero_sum", "global") for attach in (0, 1)],
    ("gpt_moe_tiny_list", "zero_sum", 0),
]


def _train(model, case, strategy, attach, rows=lambda batch: batch):
    _, loss_fn, batches = CASES[case]
    # SGD: Adam would turn the rounding noise of a zero gradient (an attention key's bias) into full steps
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    excitation = (Excitation.attach if attach else Excitation)(optimizer, model, strategy)
    stepper = optimizer if attach else excitation
    for batch in batches():
        x, y = rows(batch)
        stepper.zero_grad()
        loss_fn(model(x), y).backward()
        stepper.step()
    return excitation


def _fsdp_worker(rank, init_file, out_dir):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _join(rank, init_file)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        for case, strategy, attach in FSDP_RUNS:
            model = CASES[case][0]()
            for layer in expert_layers(model):
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            _train(model, case, strategy, attach, rows=lambda batch: _rows(batch, rank))
            state = {name: value.full_tensor() for name, value in model.state_dict().items()}
            if rank == 0:
                torch.save(state, f"{out_dir}/{case}-{strategy}-{attach}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp2_sharded_experts_step_like_one_process(tmp_path):
    run_processes(_fsdp_worker, str(tmp_path / "init"), str(tmp_path))
    for case, strategy, attach in FSDP_RUNS:
        model = CASES[case][0]()
        excitation = _train(model, case, strategy, attach)
        if strategy == "zero_sum":  # the factors are not all 1, so the scaling itself was compared
            assert any(not torch.equal(phi, torch.ones_like(phi)) for phi in excitation.last_factors)
        sharded = torch.load(tmp_path / f"{case}-{strategy}-{attach}.pt")
        for name, value in model.state_dict().items():
            where = f"{case} {strategy} attach={attach} {name}"
            torch.testing.assert_close(sharded[name], value, rtol=0, atol=1e-6, msg=lambda m, w=where: f"{w}: {m}")
