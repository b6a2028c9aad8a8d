import copy
import io
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from seeking.errors import ConfigError, SeekingWarning
from seeking.excitation import Excitation, get_strategy, list_strategies


def _count(layer, route):
    """The protocol's counting rule: only in training mode with autograd on."""
    if layer.training and torch.is_grad_enabled():
        layer.expert_counts += torch.bincount(route.flatten(), minlength=layer.num_experts).float()


class StackedMoE(nn.Module):
    """Experts stored stacked: one (E, d, d) weight and one (E, d) bias; top-k routing."""

    def __init__(self, d=3, num_experts=4, top_k=2):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(d, num_experts, bias=False)
        self.weight = nn.Parameter(torch.randn(num_experts, d, d) / d**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(num_experts, d))
        self.register_buffer("expert_counts", torch.zeros(num_experts))

    def expert_parameters(self):
        yield self.weight, None
        yield self.bias, None

    def forward(self, x, route=None):
        """``route``: (N, top_k) expert ids to force, or None to route by the router's top-k."""
        logits = self.router(x)
        if route is None:
            route = logits.topk(self.top_k, dim=-1).indices
        gates = logits.softmax(-1).gather(-1, route)
        _count(self, route)
        y = torch.einsum("nd,nkde->nke", x, self.weight[route]) + self.bias[route]
        return x + (gates.unsqueeze(-1) * y).sum(1)


class ListMoE(nn.Module):
    """Experts stored as a list of nn.Linear; top-1 routing; an expert without tokens gets no gradient."""

    def __init__(self, d=3, num_experts=3):
        super().__init__()
        self.num_experts = num_experts
        self.router = nn.Linear(d, num_experts, bias=False)
        self.experts = nn.ModuleList(nn.Linear(d, d) for _ in range(num_experts))
        self.register_buffer("expert_counts", torch.zeros(num_experts))

    def expert_parameters(self):
        for k, expert in enumerate(self.experts):
            for p in expert.parameters():
                yield p, k

    def forward(self, x, route=None):
        logits = self.router(x)
        if route is None:
            route = logits.argmax(-1)
        gates = logits.softmax(-1).gather(-1, route[:, None])
        _count(self, route)
        out = torch.zeros_like(x)
        for k, expert in enumerate(self.experts):
            chosen = route == k
            if chosen.any():
                out[chosen] = expert(x[chosen])
        return x + gates * out


class ToyModel(nn.Module):
    def __init__(self, d=3):
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.stacked = StackedMoE(d)
        self.listed = ListMoE(d)
        self.head = nn.Linear(d, 1)

    def forward(self, x, routes=(None, None)):
        h = self.listed(self.stacked(self.embed(x), routes[0]), routes[1])
        return self.head(h).squeeze(-1)


def batch(step, n=8, d=3):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(n, d, generator=g), torch.randn(n, generator=g)


def backward(model, step, routes=(None, None)):
    x, y = batch(step)
    loss = F.mse_loss(model(x, routes), y)
    loss.backward()
    return loss


# Forced routes: every expert used, and routes that leave out stacked expert 3 and listed expert 2.
ALL_USED = (torch.arange(16).view(8, 2) % 4, torch.arange(8) % 3)
SOME_UNUSED = (torch.tensor([[0, 1], [1, 2], [0, 2], [2, 1]] * 2), torch.tensor([0, 1, 1, 0] * 2))


def reference_factors(counts, strategy, gamma=1.0):
    """Phi written out from the formulas, in float64, independently of the library."""
    u = counts.double() / counts.sum()
    zero_sum = u**gamma / (u**gamma).mean()
    if strategy == "zero_sum":
        return zero_sum
    if strategy == "positive_sum":
        return zero_sum.clamp(min=1)
    if strategy == "exp_diff":
        w = u**gamma * torch.exp(gamma * (u / u.mean() - 1))
        return w / w.mean()
    if strategy == "inverted":
        w = torch.where(u > 0, u.clamp(min=1e-30) ** -gamma, 0.0)
        return w / w.mean()
    assert strategy == "global"
    return torch.ones_like(u)


def expected_params(model, old, stepped, factors):
    """The reference rule: each expert's change from ``old`` to the base optimizer's ``stepped`` scaled by Phi_k."""
    out = {}
    for name, new in stepped.items():
        layer, _, rest = name.partition(".")
        phi = factors.get(layer)
        if layer == "stacked" and rest in ("weight", "bias"):
            scale = phi.view(-1, *[1] * (new.dim() - 1))
        elif layer == "listed" and rest.startswith("experts."):
            scale = phi[int(rest.split(".")[1])]
        else:
            out[name] = new
            continue
        out[name] = old[name] + scale * (new - old[name])
    return out


def assert_same_state(a, b):
    """Same keys, shapes, dtypes and bytes in two optimizers' states."""
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for key, value in sa[i].items():
            if torch.is_tensor(value):
                assert value.dtype == sb[i][key].dtype and torch.equal(value, sb[i][key]), (i, key)
            else:
                assert value == sb[i][key], (i, key)


def plain_twin(model, optimizer):
    """A copy of the model and the wrapped optimizer, gradients included (deepcopy leaves them out)."""
    twin, plain = copy.deepcopy((model, optimizer))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    return twin, plain


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.9),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1),
}


@pytest.mark.parametrize("strategy", ["zero_sum", "positive_sum", "exp_diff", "inverted", "global"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_step_is_base_step_scaled_per_expert_and_moments_are_untouched(optimizer, strategy):
    torch.manual_seed(0)
    model = ToyModel()
    ex = Excitation(OPTIMIZERS[optimizer](model.parameters()), model, strategy, gamma=1.5)
    twin = copy.deepcopy(model)
    plain = OPTIMIZERS[optimizer](twin.parameters())
    for step in range(3):
        ex.zero_grad()
        backward(model, step)
        counts = {"stacked": model.stacked.expert_counts.clone(), "listed": model.listed.expert_counts.clone()}
        old = {name: p.detach().clone() for name, p in model.named_parameters()}
        with torch.no_grad():  # the plain optimizer steps from the same parameters with the same gradients
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                q.copy_(p)
                q.grad = None if p.grad is None else p.grad.clone()
        ex.step()
        plain.step()
        factors = {layer: reference_factors(c, strategy, gamma=1.5).float() for layer, c in counts.items()}
        expected = expected_params(model, old, dict(twin.named_parameters()), factors)
        for name, p in model.named_parameters():
            if name.startswith(("stacked.weight", "stacked.bias", "listed.experts")):
                torch.testing.assert_close(p.detach(), expected[name].detach(), rtol=1e-6, atol=1e-6, msg=name)
            else:  # the router, embedding and head move exactly as the base optimizer says
                assert torch.equal(p, expected[name]), name
        assert_same_state(ex.optimizer, plain)
        assert model.stacked.expert_counts.sum() == 0 and model.listed.expert_counts.sum() == 0
    if strategy != "global":
        assert not torch.allclose(ex.last_factors[0], torch.ones(4))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd_nesterov", "rmsprop", "adagrad"])
@pytest.mark.parametrize("fused", [True, False])
def test_global_strategy_is_bit_identical_to_the_plain_optimizer(fused, optimizer):
    torch.manual_seed(0)
    model = ToyModel()
    twin = copy.deepcopy(model)
    ex = Excitation(OPTIMIZERS[optimizer](model.parameters()), model, "global", fused=fused)
    plain = OPTIMIZERS[optimizer](twin.parameters())
    for step in range(3):
        for m, opt in ((model, ex), (twin, plain)):
            opt.zero_grad()
            backward(m, step)
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert_same_state(ex.optimizer, plain)
    assert ex.state is ex.optimizer.state and ex.defaults is ex.optimizer.defaults


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam", "rmsprop"])
def test_zero_sum_unused_expert_does_not_move_despite_optimizer_state(optimizer):
    torch.manual_seed(0)
    model = ToyModel()
    ex = Excitation(OPTIMIZERS[optimizer](model.parameters()), model)
    ex.zero_grad()
    backward(model, 0, ALL_USED)
    ex.step()
    ex.zero_grad(set_to_none=False)  # zero gradients: momentum alone would move the unused experts
    backward(model, 1, SOME_UNUSED)
    twin, plain = plain_twin(model, ex.optimizer)
    unused = [model.stacked.weight[3], model.stacked.bias[3], *model.listed.experts[2].parameters()]
    before = [p.detach().clone() for p in unused]
    ex.step()
    plain.step()
    for p, b in zip(unused, before, strict=True):
        assert torch.equal(p, b)
    assert not torch.equal(twin.stacked.weight[3], before[0])  # the base optimizer alone would move it
    assert not torch.equal(twin.listed.experts[2].weight, before[2])


def factors_after_steps(strategy, counts, gamma=1.0, seed=0, steps=1):
    layer = StackedMoE(d=2, num_experts=len(counts))
    ex = Excitation(torch.optim.SGD(layer.parameters(), lr=0.1), [layer], strategy, gamma, seed=seed)
    out = []
    for _ in range(steps):
        layer.expert_counts.copy_(torch.tensor(counts, dtype=torch.float32))
        for p in layer.parameters():
            p.grad = torch.ones_like(p)
        ex.step()
        out.append(ex.last_factors[0])
    return out if steps > 1 else out[0]


def test_factor_examples():
    close = torch.testing.assert_close
    close(factors_after_steps("zero_sum", [3, 1]), torch.tensor([1.5, 0.5]))
    close(factors_after_steps("positive_sum", [3, 1]), torch.tensor([1.5, 1.0]))
    close(factors_after_steps("global", [3, 1]), torch.ones(2))
    close(factors_after_steps("inverted", [3, 1]), torch.tensor([0.5, 1.5]))
    close(factors_after_steps("inverted", [2, 1, 1, 0]), torch.tensor([0.8, 1.6, 1.6, 0.0]))
    close(factors_after_steps("zero_sum", [3, 1], gamma=2.0), torch.tensor([1.8, 0.2]))
    close(factors_after_steps("zero_sum", [3, 1], gamma=0.5), torch.tensor([3**0.5, 1.0]) * 2 / (1 + 3**0.5))
    exp_diff = factors_after_steps("exp_diff", [3, 1])
    close(exp_diff, reference_factors(torch.tensor([3, 1]), "exp_diff").float())
    assert exp_diff[1] / exp_diff[0] < 0.5 / 1.5  # suppresses the less-used expert more than Zero-Sum
    close(factors_after_steps("zero_sum", [0, 0, 0]), torch.ones(3))  # a layer without tokens: all 1


def test_random_permutes_zero_sum_reproducibly():
    counts = [1, 2, 3, 4]
    zero_sum = factors_after_steps("zero_sum", counts)
    runs = [factors_after_steps("random", counts, seed=seed, steps=6) for seed in (0, 0, 1)]
    for phi in runs[0]:
        torch.testing.assert_close(phi.sort().values, zero_sum.sort().values)
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))
    assert len({tuple(phi.tolist()) for phi in runs[0]}) > 1


def test_layer_without_tokens_steps_like_the_base_optimizer():
    torch.manual_seed(0)
    model = ToyModel()
    ex = Excitation(torch.optim.Adam(model.parameters(), lr=0.01), model)
    ex.zero_grad()
    backward(model, 0, ALL_USED)
    model.stacked.expert_counts.zero_()
    twin, plain = plain_twin(model, ex.optimizer)
    ex.step()
    plain.step()
    torch.testing.assert_close(ex.last_factors[0], torch.ones(4), rtol=0, atol=0)
    assert torch.equal(model.stacked.weight, twin.stacked.weight)
    assert not torch.equal(model.listed.experts[0].weight, twin.listed.experts[0].weight)  # the other layer is scaled


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 50), min_size=1, max_size=8).filter(any),
    gamma=st.floats(0.1, 4.0),
    strategy=st.sampled_from(["zero_sum", "exp_diff", "inverted", "random", "positive_sum"]),
)
def test_strategy_properties(counts, gamma, strategy):
    u = torch.tensor(counts, dtype=torch.float32)
    u = u / u.sum()
    phi = get_strategy(strategy)(u, gamma, torch.Generator().manual_seed(0))
    assert phi.shape == u.shape and torch.isfinite(phi).all() and (phi >= 0).all()
    if strategy == "positive_sum":
        assert (phi >= 1).all()
    else:
        torch.testing.assert_close(phi.mean(), torch.tensor(1.0))
    if strategy in ("zero_sum", "exp_diff", "inverted"):
        assert (phi[u == 0] == 0).all()


def test_include_scales_extra_parameters_like_experts():
    torch.manual_seed(0)
    model = ToyModel()
    include = [(model.stacked.router.weight, model.stacked, None), (model.head.weight, model.listed, 1)]
    ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1), model, include=include)
    ex.zero_grad()
    backward(model, 0, SOME_UNUSED)
    twin, plain = plain_twin(model, ex.optimizer)
    old = copy.deepcopy(model)
    ex.step()
    plain.step()
    phi_stacked, phi_listed = ex.last_factors
    assert phi_stacked[3] == 0 and torch.equal(model.stacked.router.weight[3], old.stacked.router.weight[3])
    for new, base, before, scale in (
        (model.stacked.router.weight, twin.stacked.router.weight, old.stacked.router.weight, phi_stacked[:, None]),
        (model.head.weight, twin.head.weight, old.head.weight, phi_listed[1]),
    ):
        torch.testing.assert_close(new, before + scale * (base - before), rtol=1e-6, atol=1e-6)
    assert torch.equal(model.listed.router.weight, twin.listed.router.weight)


def test_counts_add_up_over_micro_batches_and_are_zeroed_by_step():
    torch.manual_seed(0)
    model = ToyModel()
    x, _ = batch(0)
    model.eval()
    model(x)
    model.train()
    with torch.no_grad():
        model(x)
    assert model.stacked.expert_counts.sum() == 0 and model.listed.expert_counts.sum() == 0
    ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1), model)
    ex.zero_grad()
    backward(model, 0, ALL_USED)
    backward(model, 1, SOME_UNUSED)
    expected = [torch.tensor([8.0, 10.0, 10.0, 4.0]), torch.tensor([7.0, 7.0, 2.0])]
    assert torch.equal(model.stacked.expert_counts, expected[0]) and torch.equal(
        model.listed.expert_counts, expected[1]
    )
    ex.step()
    for phi, counts in zip(ex.last_factors, expected, strict=True):
        torch.testing.assert_close(phi, reference_factors(counts, "zero_sum").float())
    assert model.stacked.expert_counts.sum() == 0 and model.listed.expert_counts.sum() == 0


def test_discarded_counts_leave_the_next_step_to_its_own_batch():
    """A skipped step (here the first) discards its batch's counts: the next step scales like a fresh
    step on the second batch alone; without the discard it would use both batches' counts."""
    torch.manual_seed(0)
    model = ToyModel()
    fresh = copy.deepcopy(model)
    ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1), model)
    backward(model, 0, ALL_USED)  # the skipped step: its gradients are dropped, its counts discarded
    ex.zero_grad()
    ex.discard_counts()
    assert model.stacked.expert_counts.sum() == 0 and model.listed.expert_counts.sum() == 0
    backward(model, 1, SOME_UNUSED)
    ex.step()
    alone = Excitation(torch.optim.SGD(fresh.parameters(), lr=0.1), fresh)
    backward(fresh, 1, SOME_UNUSED)
    alone.step()
    second = [torch.tensor([4.0, 6.0, 6.0, 0.0]), torch.tensor([4.0, 4.0, 0.0])]  # SOME_UNUSED's routes, counted
    both = [torch.tensor([8.0, 10.0, 10.0, 4.0]), torch.tensor([7.0, 7.0, 2.0])]  # with ALL_USED's
    for phi, phi_alone, counts, counts_both in zip(ex.last_factors, alone.last_factors, second, both, strict=True):
        torch.testing.assert_close(phi, phi_alone)
        torch.testing.assert_close(phi, reference_factors(counts, "zero_sum").float())
        assert not torch.allclose(phi, reference_factors(counts_both, "zero_sum").float())
    for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def train(ex, model, steps):
    for step in steps:
        ex.zero_grad()
        backward(model, step)
        ex.step()


def test_state_dict_round_trip_and_deepcopy_continue_identically():
    def make(strategy="random", gamma=0.5, seed=3):
        torch.manual_seed(0)
        model = ToyModel()
        return model, Excitation(torch.optim.Adam(model.parameters(), lr=0.01), model, strategy, gamma, seed=seed)

    whole, whole_ex = make()
    train(whole_ex, whole, range(4))

    first, first_ex = make()
    train(first_ex, first, range(2))
    copied, copied_ex = copy.deepcopy((first, first_ex))
    train(copied_ex, copied, range(2, 4))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_ex.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_ex = make(strategy="zero_sum", gamma=2.0, seed=99)
    resumed.load_state_dict(saved["model"])
    resumed_ex.load_state_dict(saved["optimizer"])
    assert (resumed_ex.strategy, resumed_ex.gamma) == ("random", 0.5)
    train(resumed_ex, resumed, range(2, 4))
    for other, other_ex in ((resumed, resumed_ex), (copied, copied_ex)):
        for p, q in zip(whole.parameters(), other.parameters(), strict=True):
            assert torch.equal(p, q)
        assert_same_state(whole_ex.optimizer, other_ex.optimizer)

    resumed_ex.load_state_dict(torch.optim.Adam(resumed.parameters()).state_dict())  # a plain optimizer's
    assert (resumed_ex.strategy, resumed_ex.gamma) == ("random", 0.5)


def test_closure_scheduler_and_param_groups():
    torch.manual_seed(0)
    model = ToyModel()
    twin = copy.deepcopy(model)
    ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1), model)
    ex_twin = Excitation(torch.optim.SGD(twin.parameters(), lr=0.1), twin)
    assert isinstance(ex, torch.optim.Optimizer) and ex.param_groups is ex.optimizer.param_groups

    def closure():
        ex.zero_grad()
        return backward(model, 0)

    loss = ex.step(closure)
    ex_twin.zero_grad()
    assert torch.equal(loss, backward(twin, 0))
    ex_twin.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)

    scheduler = torch.optim.lr_scheduler.LambdaLR(ex, lambda epoch: 0.5**epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        train(ex, model, range(1, 3))
        scheduler.step()
        train(ex, model, range(3, 4))
        scheduler.step()
    assert ex.optimizer.param_groups[0]["lr"] == pytest.approx(0.025) and scheduler.get_last_lr() == [0.025]

    extra = nn.Parameter(torch.ones(2))
    ex.add_param_group({"params": [extra], "lr": 0.5})
    assert len(ex.optimizer.param_groups) == 2
    extra.grad = torch.ones(2)
    ex.step()
    assert torch.equal(extra.detach(), torch.full((2,), 0.5))
    assert repr(ex).startswith("Excitation(strategy='zero_sum', gamma=1.0, layers=2, optimizer=SGD (")


def test_optimizer_hooks_run_around_the_whole_step_and_the_state_dict():
    torch.manual_seed(0)
    model = ToyModel()
    ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model)
    calls = []

    def snapshot(when, optimizer):
        counted = model.stacked.expert_counts.sum().item()
        calls.append((when, optimizer, counted, model.stacked.weight.detach().clone()))

    def pre(optimizer, args, kwargs):
        snapshot("pre", optimizer)
        return args, {"closure": lambda: torch.tensor(7.0)}  # a pre hook may replace the arguments

    handles = [
        ex.register_step_pre_hook(pre),
        ex.register_step_post_hook(lambda opt, args, kwargs: snapshot("post", opt)),
        ex.optimizer.register_step_post_hook(lambda opt, args, kwargs: snapshot("base post", opt)),
        register_optimizer_step_pre_hook(lambda opt, args, kwargs: snapshot("global", opt)),
    ]
    try:
        scheduler = torch.optim.lr_scheduler.LambdaLR(ex, lambda epoch: 0.5**epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
            ex.zero_grad()
            backward(model, 0)
            before = model.stacked.weight.detach().clone()
            assert ex.step().item() == 7.0  # the closure given by the pre hook
            scheduler.step()
    finally:
        handles[3].remove()  # global: must not outlive the test
    assert [(when, opt) for when, opt, _, _ in calls] == [
        ("global", ex),
        ("pre", ex),
        ("global", ex.optimizer),  # global hooks see both optimizers: as for any optimizer that wraps one
        ("base post", ex.optimizer),
        ("post", ex),
    ]
    snapshots = {when: (counted, weight) for when, _, counted, weight in calls}
    assert snapshots["pre"][0] == 16 and torch.equal(snapshots["pre"][1], before)
    # the base optimizer's hook sees its own step; the wrapper's post hook sees the scaled one, counts zeroed
    assert snapshots["base post"][0] == 16 and not torch.equal(snapshots["base post"][1], model.stacked.weight)
    assert snapshots["post"][0] == 0 and torch.equal(snapshots["post"][1], model.stacked.weight)
    assert scheduler.get_last_lr() == [0.05]

    for handle in handles[:3]:
        handle.remove()
    calls.clear()
    train(ex, model, range(1, 2))
    assert calls == []

    # state dict hooks: the post hook's replacement is saved, the load pre hook's replacement is loaded
    ex.register_state_dict_pre_hook(lambda opt: calls.append("save pre"))
    ex.register_state_dict_post_hook(lambda opt, state: {**state, "note": "mine"})
    ex.register_load_state_dict_pre_hook(lambda opt, state: {k: v for k, v in state.items() if k != "note"})
    ex.register_load_state_dict_post_hook(lambda opt: calls.append("load post"))
    saved = ex.state_dict()
    assert saved["note"] == "mine" and saved["excitation"]["strategy"] == "zero_sum"
    ex.load_state_dict(saved)
    assert calls == ["save pre", "load post"]

    # copies start without hooks, and without the scheduler's patch of step (which would step the original)
    copied_model, copied = copy.deepcopy((model, ex))
    assert copied.state_dict().get("note") is None, "hooks copied"
    weight = model.stacked.weight.detach().clone()
    train(copied, copied_model, range(2, 3))
    assert torch.equal(model.stacked.weight, weight) and not torch.equal(copied_model.stacked.weight, weight)


def _distributed_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = ToyModel()
        ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1), model)
        local = [[3.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] if rank == 0 else [[1.0, 2.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
        model.stacked.expert_counts.copy_(torch.tensor(local[0]))
        model.listed.expert_counts.copy_(torch.tensor(local[1]))
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        ex.step()
        assert model.stacked.expert_counts.sum() == 0 and model.listed.expert_counts.sum() == 0
        torch.save(ex.last_factors, f"{out_dir}/rank{rank}.pt")
        # a group of its own (every rank creates every group, in one order): its counts alone
        alone = [dist.new_group([r]) for r in range(2)][rank]
        ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1), model, process_group=alone)
        model.stacked.expert_counts.copy_(torch.tensor(local[0]))
        model.listed.expert_counts.copy_(torch.tensor(local[1]))
        ex.step()
        torch.save(ex.last_factors, f"{out_dir}/rank{rank}-alone.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs the gloo backend")
def test_distributed_counts_are_summed_across_the_process_group(tmp_path):
    # fork starts in milliseconds; spawn would re-import torch in each process (seconds on a small machine)
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _distributed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method=start_method
    )
    expected = [reference_factors(torch.tensor(c), "zero_sum").float() for c in ([4, 2, 2, 0], [1, 0, 2])]
    local = {0: ([3, 0, 1, 0], [0, 0, 1]), 1: ([1, 2, 1, 0], [1, 0, 1])}
    for rank in range(2):
        for phi, want in zip(torch.load(tmp_path / f"rank{rank}.pt"), expected, strict=True):
            torch.testing.assert_close(phi, want)
        alone = [reference_factors(torch.tensor(c), "zero_sum").float() for c in local[rank]]
        for phi, want in zip(torch.load(tmp_path / f"rank{rank}-alone.pt"), alone, strict=True):
            torch.testing.assert_close(phi, want)


class Layer(StackedMoE):
    """A layer whose expert_parameters() a test replaces."""

    def __init__(self, expert_parameters=None):
        super().__init__(d=2, num_experts=4)
        if expert_parameters is not None:
            self.expert_parameters = lambda: expert_parameters(self)


def excitation(layer, **kwargs):
    return Excitation(torch.optim.SGD(layer.parameters(), lr=0.1), layer, **kwargs)


def test_errors():
    with pytest.raises(ConfigError, match=r"Linear has no MoE layer: Excitation needs at least one module"):
        excitation(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="the layer list has no MoE layer"):
        Excitation(torch.optim.SGD(Layer().parameters(), lr=0.1), [])
    with pytest.raises(ConfigError, match=r"layers\[1\] \(Linear\) is not an MoE layer"):
        Excitation(torch.optim.SGD(Layer().parameters(), lr=0.1), [Layer(), nn.Linear(2, 2)])
    for gamma in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="gamma must be a finite number > 0"):
            excitation(Layer(), gamma=gamma)
    known = ", ".join(sorted(["exp_diff", "global", "inverted", "positive_sum", "random", "zero_sum"]))
    assert list_strategies() == known.split(", ")
    with pytest.raises(ConfigError, match=f"unknown Excitation strategy 'nope'; known strategies: {known}"):
        excitation(Layer(), strategy="nope")
    layer = Layer()
    layer.expert_counts = torch.zeros(5)
    with pytest.raises(ConfigError, match=r"expert_counts has shape \(5,\) but the layer has num_experts=4"):
        excitation(layer)
    with pytest.raises(
        ConfigError, match=r"stacked expert parameter has shape \(2, 4\), but its dim 0 must be num_experts=4"
    ):
        excitation(Layer(lambda self: [(self.router.weight.T, None)]))
    with pytest.raises(ConfigError, match=r"expert index 4 is out of range for num_experts=4; use 0..3"):
        excitation(Layer(lambda self: [(self.bias, 4)]))
    layer = Layer()
    with pytest.raises(ConfigError, match="is not in the wrapped optimizer's param_groups"):
        Excitation(torch.optim.SGD([layer.weight], lr=0.1), layer)
    with pytest.raises(ConfigError, match="not one of the wrapper's MoE layers"):
        excitation(layer, include=[(layer.router.weight, Layer(), None)])
    with pytest.raises(ConfigError, match="a parameter is scaled twice"):
        excitation(layer, include=[(layer.weight, layer, 0)])
    ex = excitation(layer)
    state = ex.state_dict()
    state["excitation"]["strategy"] = "nope"
    with pytest.raises(ConfigError, match="unknown Excitation strategy 'nope'"):
        ex.load_state_dict(state)
    assert ex.strategy == "zero_sum"


@pytest.mark.parametrize(
    "move",
    [
        pytest.param(lambda t: t.to(torch.int64), id="another dtype"),  # what a device move does to set_state
        pytest.param(
            lambda t: t.to("cuda"),
            id="cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_a_state_dict_that_a_framework_moved_loads_and_continues_identically(move):
    """Accelerate moves every tensor of an optimizer state dict to the device before loading it; the
    wrapper's generator state must come back as a CPU ByteTensor (torch refuses anything else)."""

    def make():
        torch.manual_seed(0)
        model = ToyModel()
        return model, Excitation(torch.optim.SGD(model.parameters(), lr=0.1), model, "random", seed=3)

    whole, whole_ex = make()
    train(whole_ex, whole, range(4))
    first, first_ex = make()
    train(first_ex, first, range(2))
    state = first_ex.state_dict()
    moved = {**state, "excitation": {**state["excitation"], "generator": move(state["excitation"]["generator"])}}
    with pytest.raises((RuntimeError, TypeError)):
        torch.Generator().set_state(moved["excitation"]["generator"])  # what the fix is for
    resumed, resumed_ex = make()
    resumed.load_state_dict(first.state_dict())
    resumed_ex.load_state_dict(moved)
    train(resumed_ex, resumed, range(2, 4))
    for p, q in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_step_after_which_no_layer_counted_anything_is_warned_once():
    torch.manual_seed(0)
    model = ToyModel()
    ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(ex, model, range(2))  # counted: nothing to say
        assert not caught
        for _ in range(3):  # a forward without counting (e.g. another trainer zeroed them): once
            ex.zero_grad()
            backward(model, 5)
            ex.discard_counts()
            ex.step()
    said = [str(w.message) for w in caught if issubclass(w.category, SeekingWarning)]
    assert len(said) == 1 and said[0].startswith("no expert layer counted a routed token since the last step")
    assert torch.equal(ex.last_factors[0], torch.ones(4))  # and the step was the plain optimizer's


@pytest.mark.parametrize("strategy", ["zero_sum", "random"])
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_attached_as_hooks_it_steps_the_optimizer_bit_identically_to_the_wrapper(optimizer, strategy):
    def make():
        torch.manual_seed(0)
        model = ToyModel()
        return model, OPTIMIZERS[optimizer](model.parameters())

    wrapped_model, base = make()
    wrapper = Excitation(base, wrapped_model, strategy, 0.5, seed=3)
    train(wrapper, wrapped_model, range(3))
    model, opt = make()
    attached = Excitation.attach(opt, model, strategy, 0.5, seed=3)
    train(opt, model, range(2))  # the optimizer itself, as a framework would call it
    state = opt.state_dict()
    assert state["excitation"]["strategy"] == strategy
    resumed_model, resumed_opt = make()
    resumed_model.load_state_dict(model.state_dict())
    resumed = Excitation.attach(resumed_opt, resumed_model, "zero_sum", 1.0)
    resumed_opt.load_state_dict(state)  # the settings and the generator come with it
    assert (resumed.strategy, resumed.gamma) == (strategy, 0.5)
    train(resumed_opt, resumed_model, [2])
    for p, q in zip(wrapped_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert all(torch.equal(a, b) for a, b in zip(wrapper.last_factors, resumed.last_factors, strict=True))
    with pytest.raises(ConfigError, match="attached to its optimizer"):
        attached.step()
    resumed.detach()  # the optimizer steps plainly again
    twin, plain = plain_twin(resumed_model, resumed_opt)
    train(resumed_opt, resumed_model, [3])
    train(plain, twin, [3])
    for p, q in zip(resumed_model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
