"""Excitation on torchtitan's MoE and its optimizer container (CPU, random init, no download).

torchtitan's language decoders cannot train on CPU (flex attention has no CPU backward, and SDPA is
refused for them), so the model here is torchtitan's own ``MoE`` modules in a small decoder-shaped
model (``layers`` a ModuleDict of blocks with ``moe_enabled``, as torchtitan's load-balancing hook
expects), trained through torchtitan's ``OptimizersContainer`` with that hook registered."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torchtitan.models.common.moe as titan_moe  # installed in CI (.ci/constraints.txt): never skipped
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchtitan.components.optimizer.optimizer import default_adamw, register_moe_load_balancing_hook
from torchtitan.models.common.feed_forward import FeedForward
from torchtitan.models.common.linear import Linear
from torchtitan.models.common.token_dispatcher import LocalTokenDispatcher

from seeking.errors import ConfigError
from seeking.excitation import Excitation
from seeking.integrations.torchtitan import excitable, excite_after_optimizer_build
from seeking.moe import expert_layers, routing_metrics

# torchtitan's router asks for float32 autocast, which CPU autocast declines with a warning
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

E, DIM, VOCAB = 4, 8, 17


def _linear(a, b):
    return Linear.Config(in_features=a, out_features=b)


def _moe(shared=False):
    shared_experts = FeedForward.Config(w1=_linear(DIM, 8), w2=_linear(8, DIM), w3=_linear(DIM, 8))
    return titan_moe.MoE.Config(
        num_experts=E,
        routed_experts=titan_moe.RoutedExperts.Config(
            inner_experts=titan_moe.GroupedExperts.Config(dim=DIM, hidden_dim=16, num_experts=E),
            token_dispatcher=LocalTokenDispatcher.Config(num_experts=E, top_k=2),
        ),
        router=titan_moe.TokenChoiceTopKRouter.Config(
            num_experts=E, gate=_linear(DIM, E), top_k=2, score_func="softmax"
        ),
        shared_experts=shared_experts if shared else None,
    ).build()


class Block(nn.Module):
    moe_enabled = True

    def __init__(self, shared, checkpointed):
        super().__init__()
        self.moe, self.checkpointed = _moe(shared), checkpointed

    def forward(self, x):
        if self.checkpointed:
            return x + checkpoint(self.moe, x, use_reentrant=False)
        return x + self.moe(x)


class TinyTitan(nn.Module):
    """Embedding, two blocks of torchtitan MoE (the second with a shared expert), a head."""

    def __init__(self, checkpointed=False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({str(i): Block(i == 1, checkpointed) for i in range(2)})
        self.head = nn.Linear(DIM, VOCAB)
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0, 0.5)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.layers.values():
            x = block(x)
        return self.head(x)


# one process: no loss mesh to all-reduce over (a real ParallelDims would build one, needing a process group)
ALONE = SimpleNamespace(get_optional_mesh=lambda name: None, ep_enabled=False, tp=1, pp_enabled=False)


def _optimizers(model, post_build=register_moe_load_balancing_hook):
    """torchtitan's container (AdamW, for-loop on CPU), then ``post_build`` as torchtitan's trainer calls a model
    spec's ``post_optimizer_build_fn`` (by default torchtitan's MoE load-balancing pre hook)."""
    config = default_adamw(lr=0.01)
    config.implementation = "for-loop"
    optimizers = config.build(model_parts=[model])
    post_build(optimizers, [model], ALONE)
    return optimizers


def _batches(steps):
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, VOCAB, (2, 7), generator=gen) for _ in range(steps)]


def _train(model, optimizers, batches, seen=None):
    for tokens in batches:
        optimizers.zero_grad()
        nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
        if seen is not None:  # torchtitan's own count, read before its pre hook zeroes it
            seen.append([block.moe.tokens_per_expert_E.clone() for block in model.layers.values()])
        optimizers.step()


def test_global_is_bit_identical_to_torchtitans_plain_container():
    plain = TinyTitan()
    excited = copy.deepcopy(plain)
    excitable(excited)
    plain_optimizers, optimizers = _optimizers(plain), _optimizers(excited)
    excitation = Excitation.attach(optimizers, excited, "global")
    _train(plain, plain_optimizers, _batches(3))
    _train(excited, optimizers, _batches(3))
    assert len(excitation.last_factors) == 2
    for (name, a), b in zip(plain.state_dict().items(), excited.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # expert_bias_E too: torchtitan's hook ran as before


def test_zero_sum_scales_each_expert_by_its_utilization_counted_by_torchtitan():
    plain = TinyTitan()
    excited = copy.deepcopy(plain)
    plain_optimizers = _optimizers(plain)
    # the model spec's route: torchtitan's own hook first, then Excitation on the container
    optimizers = _optimizers(excited, excite_after_optimizer_build("zero_sum", then=register_moe_load_balancing_hook))
    excitation = optimizers.excitation
    counters = excitable(excited)
    assert expert_layers(excited) == counters and excitation.layers == counters  # made once; only the counters
    batches = _batches(1)
    before = {name: p.detach().clone() for name, p in plain.named_parameters()}
    titan_counts = []
    _train(plain, plain_optimizers, batches)
    _train(excited, optimizers, batches, seen=titan_counts)

    for i, block in excited.layers.items():
        counts = titan_counts[0][int(i)]
        assert counts.sum() == 2 * 6 * 2  # every token's top-2 choices
        assert torch.equal(counters[int(i)].last_counts, counts)
        assert block.moe.tokens_per_expert_E.sum() == 0, "torchtitan's pre hook zeroed its own count"
        share = counts / counts.sum()
        phi = share / share.mean()  # Zero-Sum, gamma 1 (METHODS.md 2)
        assert not torch.allclose(phi, torch.ones(E))
        torch.testing.assert_close(excitation.last_factors[int(i)], phi)
        for name, p in block.moe.named_parameters():
            key = f"layers.{i}.moe.{name}"
            plain_step = plain.get_parameter(key).detach() - before[key]
            step = p.detach() - before[key]
            if name.startswith("routed_experts.inner_experts."):
                want = phi.view(-1, *[1] * (p.dim() - 1)) * plain_step
                torch.testing.assert_close(step, want, rtol=1e-5, atol=1e-7, msg=key)
            else:  # router, shared expert: the plain step
                assert torch.equal(step, plain_step), key
    assert routing_metrics(excited)  # the metrics read the counters


def test_counts_add_up_over_micro_batches_and_once_under_activation_checkpointing():
    batches = _batches(2)
    counts = {}
    for checkpointed in (False, True):
        model = TinyTitan(checkpointed)
        counters = excitable(model)
        for tokens in batches:  # accumulation of 2 micro-batches
            nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
        counts[checkpointed] = torch.stack([c.expert_counts for c in counters])
        titan = torch.stack([block.moe.tokens_per_expert_E for block in model.layers.values()])
        # torchtitan counts a checkpointed forward twice (its own note); ours once
        assert torch.equal(counts[checkpointed] * (2 if checkpointed else 1), titan)
    assert counts[False].sum() == 2 * 2 * (2 * 6 * 2)
    with torch.no_grad():
        model(batches[0][:, :-1])
    assert torch.equal(torch.stack([c.expert_counts for c in counters]), counts[True]), "no_grad forward counted"


def test_refusals():
    with pytest.raises(ConfigError, match="no torchtitan MoE"):
        excitable(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="pipeline parallelism"):
        model = TinyTitan()
        excite_after_optimizer_build()(_optimizers(model), [model], SimpleNamespace(pp_enabled=True))
    with torch.device("meta"):
        model = TinyTitan.__new__(TinyTitan)
        nn.Module.__init__(model)
        model.layers = nn.ModuleDict({"0": Block(False, False)})
    with pytest.raises(ConfigError, match="meta device"):
        excitable(model)
