"""Tests of seeking.moe: routing, dispatch, the MoE layer's counts and the routing metrics."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seeking.errors import ConfigError
from seeking.models import create_model
from seeking.moe import (
    ExpertLayer,
    MoEFeedForward,
    TopKRouter,
    class_specialization,
    dead_fraction,
    each_expert,
    expert_layers,
    grouped_mlp,
    kernel_for,
    layer_metrics,
    layer_utilization,
    load_balancing_loss,
    load_entropy,
    max_violation,
    moe_aux_loss,
    router_z_loss,
    routing_metrics,
    run_experts,
    utilization,
)
from seeking.moe.dispatch import CPU_LOOP_ROWS_PER_EXPERT
from seeking.training.optim import OPTIMIZERS, build_optimizer

DIM, HIDDEN, E, K = 6, 8, 5, 2


def layer(storage="stacked", **kwargs) -> MoEFeedForward:
    torch.manual_seed(0)
    return MoEFeedForward(DIM, HIDDEN, E, K, storage=storage, **kwargs)


@torch.no_grad()
def reference(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax of the gate, top-k, renormalise, weighted sum of the experts' MLPs."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        probs = (moe.router.gate.weight @ x[t]).softmax(-1)
        chosen = sorted(range(E), key=lambda e: -float(probs[e]))[:K]
        total = sum(probs[e] for e in chosen)
        for e in chosen:
            out[t] += probs[e] / total * (F.gelu(x[t] @ moe.w1[e]) @ moe.w2[e])
    return out


def to_list(stacked: MoEFeedForward, **kwargs) -> MoEFeedForward:
    listed = layer("list", **kwargs)
    listed.router.load_state_dict(stacked.router.state_dict())
    with torch.no_grad():
        for e, expert in enumerate(listed.experts):
            expert[0].weight.copy_(stacked.w1[e].T)
            expert[2].weight.copy_(stacked.w2[e].T)
    return listed


# ---------------------------------------------------------------- router


def test_router_top_k_matches_brute_force_and_renormalises():
    torch.manual_seed(1)
    router = TopKRouter(DIM, E, K)
    x = torch.randn(20, DIM)
    routing = router(x)
    probs = (x @ router.gate.weight.T).softmax(-1).detach()
    for t in range(20):
        best = sorted(range(E), key=lambda e: -float(probs[t, e]))[:K]
        assert routing.indices[t].tolist() == best
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(20))
    chosen = probs.gather(1, routing.indices)
    torch.testing.assert_close(routing.weights, chosen / chosen.sum(1, keepdim=True))
    raw = TopKRouter(DIM, E, K, renormalize=False)
    raw.load_state_dict(router.state_dict())
    torch.testing.assert_close(raw(x).weights, chosen)
    assert routing.aux_loss.item() == 0


def test_load_balancing_and_z_loss_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])
    indices = torch.tensor([[0], [0], [2], [1]])
    # f = (2/4, 1/4, 1/4), P = (1.9/4, 1.1/4, 1.0/4); 3 * sum f P
    expected = 3 * (0.5 * 1.9 / 4 + 0.25 * 1.1 / 4 + 0.25 * 1.0 / 4)
    assert load_balancing_loss(probs, indices).item() == pytest.approx(expected)
    # the last token masked: f = (2/3, 0, 1/3), P = (1.4/3, 0.6/3, 1.0/3)
    valid = torch.tensor([True, True, True, False])
    expected = 3 * (2 / 3 * 1.4 / 3 + 1 / 3 * 1.0 / 3)
    assert load_balancing_loss(probs, indices, valid).item() == pytest.approx(expected)
    uniform = torch.full((6, 3), 1 / 3)
    assert load_balancing_loss(uniform, torch.tensor([[0, 1], [2, 0], [1, 2]] * 2)).item() == pytest.approx(1)

    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    lse = [math.log(2), math.log(math.e + math.e**2)]
    assert router_z_loss(logits).item() == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2)
    assert router_z_loss(logits, torch.tensor([False, True])).item() == pytest.approx(lse[1] ** 2)


def test_router_aux_loss_uses_coefficients():
    torch.manual_seed(2)
    router = TopKRouter(DIM, E, K, aux_loss_coef=0.5, z_loss_coef=0.25)
    x = torch.randn(7, DIM)
    r = router(x)
    logits = router.gate(x)
    expected = 0.5 * load_balancing_loss(r.probs, r.indices) + 0.25 * router_z_loss(logits)
    torch.testing.assert_close(r.aux_loss, expected)
    with pytest.raises(ConfigError, match="top_k"):
        TopKRouter(DIM, E, E + 1)


def test_routing_is_the_same_under_autocast():
    torch.manual_seed(3)
    router = TopKRouter(256, 64, 2)
    x = torch.randn(4096, 256)
    routing = router(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = router(x)
        naive = router.gate(x).float().softmax(-1).topk(2).indices  # the gate's matmul in bfloat16
    assert torch.equal(mixed.indices, routing.indices) and mixed.probs.dtype == torch.float32
    torch.testing.assert_close(mixed.probs, routing.probs)
    assert (
        0.01 < (naive != routing.indices).any(1).float().mean() < 0.03
    )  # so this test can tell; router.py: "about 2%"

    micro = create_model("micro_moe", num_classes=10, in_channels=1, image_size=8)  # routes by top-K activations
    images = torch.randn(512, 1, 8, 8)
    micro(images)
    chosen = [m.last_indices for m in expert_layers(micro)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        micro(images)
    for before, m in zip(chosen, expert_layers(micro), strict=True):
        assert torch.equal(m.last_indices, before)


# ---------------------------------------------------------------- dispatch and layer


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 9), experts=st.integers(1, 5), k=st.integers(1, 3), seed=st.integers(0, 99))
def test_run_experts_matches_a_token_loop(tokens, experts, k, seed):
    k = min(k, experts)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 3, generator=gen)
    indices = torch.rand(tokens, experts, generator=gen).argsort(1)[:, :k]
    weights = torch.rand(tokens, k, generator=gen)
    valid = torch.rand(tokens, generator=gen) < 0.7
    calls = []

    def expert(e, h):
        calls.append(e)
        return h * (e + 1) + e

    out = run_experts(x, indices, weights, each_expert(expert), experts, valid)
    expected = torch.zeros_like(x)
    for t in range(tokens):
        for j in range(k):
            e = int(indices[t, j])
            expected[t] += valid[t] * weights[t, j] * (x[t] * (e + 1) + e)
    torch.testing.assert_close(out, expected)
    assert calls == list(range(experts))  # each expert runs once, an unused one on no tokens


def _step(moe: MoEFeedForward, x: torch.Tensor, mask: torch.Tensor | None, grad: torch.Tensor) -> list[torch.Tensor]:
    """Output, counts and every gradient (input, gate, experts) of one forward and backward."""
    x = x.clone().requires_grad_()
    moe.zero_grad(set_to_none=True)
    out = moe(x, mask)
    out.backward(grad.to(out.dtype))
    experts = [p.grad for p, _ in moe.expert_parameters()]
    return [out, moe.last_counts.clone(), x.grad, moe.router.gate.weight.grad, *experts]


@pytest.mark.parametrize("autocast", [False, True])
def test_grouped_mm_kernel_equals_the_loop_and_list_storage(autocast):
    torch.manual_seed(0)
    stacked = MoEFeedForward(8, 16, E, K)  # widths x 4 bytes multiples of 16: grouped_mm takes them on CPU
    x, grad = torch.randn(2, 9, 8), torch.randn(2, 9, 8)
    mask = torch.arange(9) < torch.tensor([[9], [3]])  # padding: rows after the groups in the sorted order
    assert kernel_for(x, stacked.w1, stacked.w2) == "grouped_mm"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loop_stacked = copy.deepcopy(stacked)
        loop_stacked.kernel = "loop"
        for m in (None, mask):
            results = _step(stacked, x, m, grad)
            loop = _step(loop_stacked, x, m, grad)
            assert results[0].dtype == loop[0].dtype == (torch.bfloat16 if autocast else torch.float32)
            tolerance = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-6, "rtol": 1e-5}
            for a, b in zip(results, loop, strict=True):
                torch.testing.assert_close(a, b, **tolerance)
            if m is not None:  # padding tokens: no output, no gradient, not counted
                assert results[0][~m].abs().sum() == 0 and results[2][~m].abs().sum() == 0
                assert results[1].sum() == m.sum() * K
    listed = copy.deepcopy(stacked)
    listed.storage = "list"
    listed.experts = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.GELU(), torch.nn.Linear(16, 8, bias=False))
        for _ in range(E)
    )
    del listed.w1, listed.w2
    with torch.no_grad():
        for e, expert in enumerate(listed.experts):
            expert[0].weight.copy_(stacked.w1[e].T)
            expert[2].weight.copy_(stacked.w2[e].T)
    *results, w1_grad, w2_grad = _step(stacked, x, mask, grad)
    *list_results, list_grads = (*(r := _step(listed, x, mask, grad))[:4], r[4:])
    for a, b in zip(results, list_results, strict=True):  # output, counts, input and gate gradients
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(w1_grad, torch.stack(list_grads[0::2]).transpose(1, 2))
    torch.testing.assert_close(w2_grad, torch.stack(list_grads[1::2]).transpose(1, 2))


def test_grouped_mm_gives_unused_experts_a_zero_gradient():
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 16, E, K)
    x = torch.randn(2, 8)  # 2 tokens x top-2: at most 4 of the 5 experts are used
    moe(x).square().sum().backward()
    used = set(moe.last_indices.flatten().tolist())
    assert len(used) < E
    for e in range(E):
        assert (moe.w1.grad[e].abs().sum() > 0) == (moe.w2.grad[e].abs().sum() > 0) == (e in used)


def test_kernel_for_falls_back_to_the_loop_where_grouped_mm_cannot_run():
    w = torch.zeros(E, 8, 8)
    assert kernel_for(torch.zeros(3, 8), w, w) == "grouped_mm"
    assert kernel_for(torch.zeros(3, 8, dtype=torch.float64), w.double(), w.double()) == "loop"  # dtype
    assert kernel_for(torch.zeros(3, 6), torch.zeros(E, 6, 8), torch.zeros(E, 8, 6)) == "loop"  # 24-byte rows
    assert kernel_for(torch.zeros(3, 8), w.transpose(1, 2), w) == "loop"  # strided weights
    assert kernel_for(torch.zeros(3, 8, device="meta"), w.to("meta"), w.to("meta")) == "loop"  # device type
    # on the CPU, from CPU_LOOP_ROWS_PER_EXPERT rows per expert on average, the loop
    rows = CPU_LOOP_ROWS_PER_EXPERT * E
    assert kernel_for(torch.zeros(rows - 1, 8), w, w) == "grouped_mm"
    assert kernel_for(torch.zeros(rows, 8), w, w) == "loop"
    with pytest.raises(ConfigError, match="kernel must be one of"):
        grouped_mlp(w, w, kernel="fused")
    # asked for by name where it cannot run: one error that names the kernel (torch's names none)
    forced = MoEFeedForward(8, 16, E, K).double()
    forced.kernel = "grouped_mm"
    with pytest.raises(ConfigError, match=r"kernel 'grouped_mm' cannot run these experts \(cpu, torch.float64"):
        forced(torch.randn(3, 8, dtype=torch.float64))


def test_kernel_for_under_torch_compile_gives_grouped_mm_only_the_dtypes_its_meta_kernel_takes(monkeypatch):
    # a traced CUDA float32 _grouped_mm would fail in the meta kernel; eager CUDA float32 runs it
    def fake(dtype, *shape):  # what kernel_for reads of a CUDA tensor, without a GPU
        return types.SimpleNamespace(device=torch.device("cuda"), dtype=dtype, shape=shape, is_contiguous=lambda: True)

    def choice(dtype):
        return kernel_for(fake(dtype, 3, 8), fake(dtype, E, 8, 8), fake(dtype, E, 8, 8))

    assert choice(torch.float32) == choice(torch.bfloat16) == "grouped_mm"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert choice(torch.float32) == "loop" and choice(torch.bfloat16) == "grouped_mm"
    assert (
        kernel_for(torch.zeros(3, 8, dtype=torch.bfloat16), *[torch.zeros(E, 8, 8, dtype=torch.bfloat16)] * 2) == "loop"
    )


def test_layer_matches_reference_for_both_storages():
    stacked = layer()
    x = torch.randn(3, 4, DIM)
    out = stacked(x)
    torch.testing.assert_close(out, reference(stacked, x.view(-1, DIM)).view(x.shape))
    torch.testing.assert_close(to_list(stacked)(x), out)


def test_unused_experts_get_a_zero_gradient_in_both_storages():
    stacked = layer()
    listed = to_list(stacked)
    x = torch.randn(2, DIM)  # 2 tokens x top-2: at most 4 of the 5 experts are used
    stacked(x).sum().backward()
    listed(x).sum().backward()
    used = set(stacked.last_indices.flatten().tolist())
    assert len(used) < E
    for e in range(E):
        w1_grad = stacked.w1.grad[e].abs().sum().item()
        list_grad = listed.experts[e][0].weight.grad.abs().sum().item()  # a tensor, never None
        assert (w1_grad > 0) == (list_grad > 0) == (e in used)
    assert stacked.router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_both_storages_train_identically_with_unused_experts(name):
    # not renormalised, so every gate row has a real gradient: with renormalised top-k weights, the
    # rows of unchosen experts have gradients of rounding noise (1e-11), which Adam would blow up to lr
    stacked = layer(renormalize=False)
    listed = to_list(stacked, renormalize=False)
    optimizers = [
        build_optimizer(name, m.parameters(), lr=0.01, momentum=0.9, weight_decay=0.1) for m in (stacked, listed)
    ]
    gen = torch.Generator().manual_seed(0)
    unused = 0
    for _ in range(6):
        x = torch.randn(2, DIM, generator=gen)  # at most 4 of the 5 experts used at each step
        for model, optimizer in zip((stacked, listed), optimizers, strict=True):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
        unused += E - len(set(stacked.last_indices.flatten().tolist()))
    assert unused >= 6
    torch.testing.assert_close(listed.router.gate.weight, stacked.router.gate.weight)
    for e, expert in enumerate(listed.experts):
        torch.testing.assert_close(expert[0].weight, stacked.w1[e].T)
        torch.testing.assert_close(expert[2].weight, stacked.w2[e].T)


@pytest.mark.parametrize("storage", ["stacked", "list"])
def test_an_empty_batch_gives_an_empty_output_and_zero_gradients(storage):
    moe = MoEFeedForward(8, 16, E, K, storage=storage, aux_loss_coef=0.01, z_loss_coef=0.001)
    moe.train()
    for shape in [(0, 8), (2, 0, 8)]:
        x = torch.randn(*shape, requires_grad=True)
        out = moe(x)
        (out.sum() + moe.aux_loss).backward()
        assert out.shape == shape and moe.last_indices.shape == (*shape[:-1], K)
        assert moe.aux_loss.item() == 0 and moe.expert_counts.sum().item() == 0
        assert all(p.grad is None or not p.grad.any() for p in moe.parameters())


def test_mask_drops_padding_from_counts_and_outputs():
    moe = layer(aux_loss_coef=1.0)
    x = torch.randn(2, 3, DIM)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = moe(x, mask)
    assert out[~mask].abs().sum() == 0
    torch.testing.assert_close(out[mask], moe(x[mask]))  # real tokens are unaffected by padding
    moe.expert_counts.zero_()
    moe(x, mask)
    assert moe.expert_counts.sum().item() == 3 * K
    assert (moe.last_indices[~mask] == -1).all()
    with pytest.raises(ConfigError, match="mask"):
        moe(x, mask[:, :2])


def test_counts_accumulate_only_in_training_with_grad():
    moe = layer()
    assert isinstance(moe, ExpertLayer) and isinstance(layer("list"), ExpertLayer)
    x = torch.randn(10, DIM)
    moe(x)
    first = torch.bincount(moe.last_indices.flatten(), minlength=E).float()
    assert moe.expert_counts.dtype == torch.float32
    torch.testing.assert_close(moe.expert_counts, first)
    torch.testing.assert_close(moe.last_counts, first)
    y = torch.randn(4, DIM)
    moe(y)
    second = torch.bincount(moe.last_indices.flatten(), minlength=E).float()
    torch.testing.assert_close(moe.expert_counts, first + second)
    with torch.no_grad():
        moe(x)
    moe.eval()
    moe(x)
    torch.testing.assert_close(moe.expert_counts, first + second)
    torch.testing.assert_close(moe.last_counts, first)  # the record follows every forward


def test_counts_stay_exact_float32_when_the_model_is_cast_to_half_precision():
    """bfloat16 holds integers exactly only up to 256: the counting buffers keep float32 through .to()."""
    moe = layer().to(torch.bfloat16)
    assert moe.router.gate.weight.dtype == torch.bfloat16
    assert moe.expert_counts.dtype == moe.last_counts.dtype == torch.float32
    for _ in range(200):
        moe(torch.randn(3, DIM, dtype=torch.bfloat16))
    assert moe.expert_counts.sum() == 200 * 3 * moe.router.top_k  # exact; bfloat16 would have stalled


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_counts_each_token_once(reentrant):
    """The recomputation in backward routes the same tokens again: they were counted in the forward."""
    moe = layer()
    x = torch.randn(10, DIM, requires_grad=True)
    torch.utils.checkpoint.checkpoint(moe, x, use_reentrant=reentrant).sum().backward()
    once = torch.bincount(moe.last_indices.flatten(), minlength=E).float()
    assert x.grad is not None and once.sum() == 10 * moe.router.top_k
    torch.testing.assert_close(moe.expert_counts, once)


def test_expert_parameters_and_aux_loss_sum():
    stacked, listed = layer(aux_loss_coef=0.1), layer("list", z_loss_coef=0.1)
    shapes = [(p.shape, k) for p, k in stacked.expert_parameters()]
    assert shapes == [((E, DIM, HIDDEN), None), ((E, HIDDEN, DIM), None)]
    pairs = list(listed.expert_parameters())
    assert [k for _, k in pairs] == [e for e in range(E) for _ in range(2)]
    assert {id(p) for p, _ in pairs} == {id(p) for p in listed.experts.parameters()}
    model = torch.nn.Sequential(stacked, listed)
    assert expert_layers(model) == [stacked, listed]
    model(torch.randn(4, DIM))
    torch.testing.assert_close(moe_aux_loss(model), stacked.aux_loss + listed.aux_loss)
    assert stacked.aux_loss > 0 and listed.aux_loss > 0
    clone = copy.deepcopy(model)  # the aux loss's graph is not copied
    assert clone[0].aux_loss.grad_fn is None and clone[0].aux_loss == stacked.aux_loss
    with pytest.raises(ConfigError, match="storage"):
        layer("dict")


# ---------------------------------------------------------------- metrics


def test_metrics_of_balanced_and_collapsed_counts():
    uniform = torch.full((4,), 5.0)
    torch.testing.assert_close(utilization(uniform), torch.ones(4))
    assert dead_fraction(uniform) == 0 and max_violation(uniform) == pytest.approx(0)
    assert load_entropy(uniform) == pytest.approx(math.log(4))
    collapsed = torch.tensor([0.0, 12.0, 0.0, 0.0])
    assert dead_fraction(collapsed) == 0.75 and max_violation(collapsed) == pytest.approx(3)
    assert load_entropy(collapsed) == 0
    torch.testing.assert_close(utilization(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))
    assert dead_fraction(torch.zeros(3)) == 1 and load_entropy(torch.zeros(3)) == 0


def test_class_specialization():
    # expert 0 sees only class 0; expert 1 sees classes 1, 1, 2: Gini-Simpson 0 and 1 - (4 + 1) / 9
    indices = torch.tensor([[0], [0], [1], [1], [1], [-1]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    expected = (2 * 0 + 3 * (1 - 5 / 9)) / 5
    assert class_specialization(indices, labels, 3) == pytest.approx(expected)
    # per-example labels broadcast over tokens: (B=2, T=2, k=1)
    tokens = torch.tensor([[[0], [0]], [[1], [1]]])
    assert class_specialization(tokens, torch.tensor([3, 5]), 2) == 0
    assert class_specialization(tokens, torch.tensor([[3, 5], [3, 5]]), 2) == pytest.approx(0.5)
    # tokens labelled -100 (lm_loss's ignore label) are left out, wherever they are routed
    ignored = torch.cat([indices, torch.tensor([[1], [0], [2]])])
    assert class_specialization(ignored, torch.cat([labels, torch.full((3,), -100)]), 3) == pytest.approx(expected)
    assert class_specialization(indices[:2], torch.full((2,), -100), 3) == 0  # nothing left
    with pytest.raises(ConfigError, match="-100"):
        class_specialization(indices, labels - 1, 3)


def test_routing_metrics_per_layer_and_mean():
    a, b = layer(), layer()
    model = torch.nn.Sequential(a, b)
    model(torch.randn(8, DIM))
    metrics = routing_metrics(model, labels=torch.arange(8) % 2)
    assert metrics["layer0/dead_fraction"] == layer_metrics(a)["dead_fraction"]
    for name in ("dead_fraction", "max_violation", "load_entropy", "token_entropy", "specialization"):
        assert metrics[name] == pytest.approx((metrics[f"layer0/{name}"] + metrics[f"layer1/{name}"]) / 2)
    assert 0 < metrics["token_entropy"] < math.log(E)


class ProtocolLayer(torch.nn.Module):
    """A user's layer written from seeking.moe.protocol's documentation alone: top-1 routing to the
    expert of the largest of the first E features, stacked expert weights."""

    def __init__(self, metered: bool = True) -> None:
        super().__init__()
        self.num_experts = E
        self.register_buffer("expert_counts", torch.zeros(E))
        self.weight = torch.nn.Parameter(torch.randn(E, DIM, DIM))
        self.metered = metered

    def expert_parameters(self):
        yield self.weight, None

    def forward(self, x):
        chosen = x[:, :E].argmax(1)
        counts = torch.bincount(chosen, minlength=E)  # int64: any numeric dtype will do
        if self.training and torch.is_grad_enabled():
            self.expert_counts += counts
        if self.metered:
            self.last_counts = counts
            self.last_indices = chosen[:, None]
        return torch.einsum("td,tde->te", x, self.weight[chosen])


def test_routing_metrics_read_a_layer_written_from_the_protocol():
    model = torch.nn.Sequential(ProtocolLayer(), torch.nn.Linear(DIM, DIM))
    x = torch.zeros(6, DIM)
    x[torch.arange(6), torch.tensor([0, 0, 0, 1, 1, 3])] = 1.0  # counts (3, 2, 0, 1, 0)
    with torch.no_grad():
        model.eval()(x)
    metrics = routing_metrics(model, labels=torch.tensor([0, 0, 0, 1, 2, 1]))
    shares = [3 / 6, 2 / 6, 1 / 6]
    assert metrics["layer0/dead_fraction"] == metrics["dead_fraction"] == pytest.approx(2 / 5)
    assert metrics["max_violation"] == pytest.approx(5 * 3 / 6 - 1)
    assert metrics["load_entropy"] == pytest.approx(-sum(s * math.log(s) for s in shares))
    # expert 0: classes 0, 0, 0; expert 1: 1, 2; expert 3: 1. Weighted Gini-Simpson: (3*0 + 2*0.5 + 1*0) / 6
    assert metrics["specialization"] == pytest.approx(1 / 6)
    assert "token_entropy" not in metrics  # the layer has no last_token_entropy
    assert layer_utilization(model) == [pytest.approx([2.5, 5 / 3, 0, 5 / 6, 0])]

    with pytest.raises(ConfigError, match=r"0 \(ProtocolLayer\) has no last_counts"):
        routing_metrics(torch.nn.Sequential(ProtocolLayer(metered=False)))
    model[0].last_counts = torch.zeros(E + 1)
    with pytest.raises(ConfigError, match="last_counts has shape"):
        routing_metrics(model)


def test_rows_after_the_groups_never_reach_a_gradient_even_as_nan():
    """A grouped kernel may leave the padding rows (after the last group) as uninitialised memory, which
    can hold NaN: neither the output nor any gradient (inputs, routing weights) may see them."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, requires_grad=True)
    logits = torch.randn(6, 3, requires_grad=True)
    weights, indices = logits.softmax(-1).topk(2, dim=-1)
    valid = torch.tensor([True, True, True, True, False, False])

    def garbage_after_groups(inputs, counts):
        out = inputs * 2
        return torch.cat([out[: int(counts.sum())], torch.full_like(out[int(counts.sum()) :], math.nan)])

    out = run_experts(x, indices, weights, garbage_after_groups, 3, valid)
    out.sum().backward()
    assert out.isfinite().all() and x.grad.isfinite().all() and logits.grad.isfinite().all()
    assert (out[4:] == 0).all()
