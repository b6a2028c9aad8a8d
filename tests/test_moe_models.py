"""Tests of the MoE model families: Micro-MoE, ViT-MoE and GPT-MoE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seeking.errors import ConfigError
from seeking.models import GPTMoE, MicroMoE, ViTMoE, create_model, lm_loss
from seeking.moe import ExpertLayer, MoEFeedForward, expert_layers, moe_aux_loss, routing_metrics

SMALL_VIT = {"depth": 2, "width": 16, "heads": 2, "num_experts": 4, "patch_size": 2}
SMALL_GPT = {"vocab_size": 11, "block_size": 8, "depth": 2, "width": 16, "heads": 2, "num_experts": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    # models this small gain nothing from a second intra-op thread; on a busy machine its
    # synchronisation at every op makes a test 100 times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fits(model: torch.nn.Module, inputs: torch.Tensor, loss_fn, steps: int = 15) -> tuple[float, float]:
    """First and last loss (task + aux) of a few SGD steps on one fixed batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(inputs)) + moe_aux_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_registered_variants():
    assert create_model("micro_moe", in_channels=1, image_size=8).cfg["depth"] == 4
    assert len(expert_layers(create_model("sparse_mlp_deep10", in_channels=1, image_size=4))) == 10
    assert len(expert_layers(create_model("sparse_mlp_deep20", in_channels=1, image_size=4))) == 20
    vit = create_model("vit_moe_tiny")
    assert (vit.cfg["depth"], vit.cfg["width"], vit.cfg["num_experts"], vit.cfg["top_k"]) == (4, 128, 64, 2)
    assert create_model("gpt_moe_small", vocab_size=5).cfg["num_experts"] == 16


def test_micro_moe_keeps_exactly_k_activations():
    torch.manual_seed(0)
    model = MicroMoE(depth=3, width=40, sparsity=0.9, num_classes=3, in_channels=1, image_size=6)
    k = model.cfg["k"]
    assert k == 4
    captured = []
    for layer in model.layers:
        layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    assert model(torch.randn(7, 1, 6, 6)).shape == (7, 3)
    assert len(captured) == 3
    for out in captured:
        assert ((out != 0).sum(1) == k).all()
    for layer in expert_layers(model):
        assert isinstance(layer, ExpertLayer) and layer.num_experts == 40
        assert layer.expert_counts.sum().item() == 7 * k
        assert [(p.shape, i) for p, i in layer.expert_parameters()] == [
            (layer.linear.weight.shape, None),
            ((40,), None),
        ]
    assert model.layers[0].linear.weight.shape == (40, 36)
    with pytest.raises(ConfigError, match="sparsity"):
        MicroMoE(sparsity=1.0)


def test_vit_moe_shapes_layers_and_pooling():
    torch.manual_seed(0)
    for pool in ("cls", "mean"):
        model = ViTMoE(**SMALL_VIT, pool=pool, num_classes=5, in_channels=1, image_size=(4, 6))
        assert model(torch.randn(3, 1, 4, 6)).shape == (3, 5)
        layers = expert_layers(model)
        assert len(layers) == 2 and all(isinstance(m, MoEFeedForward) for m in layers)
        tokens = 6 + (pool == "cls")
        assert all(m.expert_counts.sum().item() == 3 * tokens * 2 for m in layers)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        ViTMoE(**SMALL_VIT, image_size=5)


def test_gpt_moe_is_causal_and_tied():
    torch.manual_seed(0)
    model = GPTMoE(**SMALL_GPT).eval()
    idx = torch.randint(0, 11, (2, 8))
    logits = model(idx)
    assert logits.shape == (2, 8, 11)
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    other = model(changed)
    torch.testing.assert_close(other[:, :5], logits[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(other[:, 5:], logits[:, 5:])
    assert model.head.weight is model.tok_embed.weight
    with pytest.raises(ConfigError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_gpt_moe_mask_leaves_padding_uncounted():
    model = GPTMoE(**SMALL_GPT)
    mask = torch.tensor([[True] * 8, [True] * 3 + [False] * 5])
    model(torch.randint(0, 11, (2, 8)), mask)
    assert all(m.expert_counts.sum().item() == 11 * 2 for m in expert_layers(model))


@pytest.mark.parametrize("family", ["micro", "vit", "gpt"])
def test_a_few_steps_reduce_the_loss(family):
    torch.manual_seed(0)
    if family == "gpt":
        model = GPTMoE(**SMALL_GPT)
        idx = torch.randint(0, 11, (4, 9))
        first, last = fits(model, idx[:, :-1], lambda logits: lm_loss(logits, idx[:, 1:]))
    else:
        images, labels = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))
        if family == "micro":
            model = MicroMoE(depth=2, width=32, num_classes=3, in_channels=1, image_size=4)
        else:
            model = ViTMoE(**SMALL_VIT, num_classes=3, in_channels=1, image_size=4)
        first, last = fits(model, images, lambda logits: F.cross_entropy(logits, labels))
        metrics = routing_metrics(model, labels)
        assert 0 <= metrics["specialization"] <= 1 - 1 / 3 + 1e-6
    assert last < 0.7 * first
