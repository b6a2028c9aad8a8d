"""The fused Excitation step (each expert stepped with learning rate Phi_k * lr inside the update) against
the general fallback (snapshot, base step, lerp) and the float64 reference rule."""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_excitation import ALL_USED, SOME_UNUSED, ToyModel, batch, expected_params, reference_factors

from seeking.excitation import Excitation, fused_types
from seeking.excitation.fused import fused_step

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_momentum_dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05),
    "sgd_nesterov_maximize": lambda ps: torch.optim.SGD(
        ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True
    ),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adam_l2_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "adamw_foreach_maximize": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, foreach=True, maximize=True),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01),
    "rmsprop_centered_momentum": lambda ps: torch.optim.RMSprop(
        ps, lr=0.01, momentum=0.9, centered=True, weight_decay=0.05
    ),
    "adagrad": lambda ps: torch.optim.Adagrad(
        ps, lr=0.1, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.1
    ),
}
# Routes per step: some experts unused in some steps (list storage then has no gradient for them).
ROUTES = [ALL_USED, SOME_UNUSED, (None, None), SOME_UNUSED]
EXPERT = ("stacked.weight", "stacked.bias", "listed.experts")


def grads_from(model, twin):
    with torch.no_grad():
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            q.copy_(p)
            q.grad = None if p.grad is None else p.grad.clone()


@pytest.mark.parametrize("strategy", ["zero_sum", "exp_diff", "random"])
@pytest.mark.parametrize("optimizer", list(FAST))
def test_fused_step_equals_the_fallback_and_the_reference(optimizer, strategy):
    """Each step from the same parameters and gradients: the optimizer state bit for bit the fallback's,
    the parameters within 1e-6 of it and of the reference rule (the plain optimizer's change scaled by
    the float64 factors), over steps with unused experts, momentum and weight decay."""
    torch.manual_seed(0)
    model = ToyModel()
    fused = Excitation(FAST[optimizer](model.parameters()), model, strategy, gamma=1.5, seed=1)
    assert all(fused_step(fused.optimizer, g) is not None for g in fused.param_groups)
    lerped_model, plain_model = copy.deepcopy(model), copy.deepcopy(model)
    lerped = Excitation(FAST[optimizer](lerped_model.parameters()), lerped_model, strategy, 1.5, seed=1, fused=False)
    plain = FAST[optimizer](plain_model.parameters())
    differs = False
    for step, routes in enumerate(ROUTES):
        fused.zero_grad()
        x, y = batch(step)
        F.mse_loss(model(x, routes), y).backward()
        counts = {"stacked": model.stacked.expert_counts.clone(), "listed": model.listed.expert_counts.clone()}
        old = {name: p.detach().clone() for name, p in model.named_parameters()}
        grads = [p.grad for p in model.parameters()]
        for twin in (lerped_model, plain_model):
            grads_from(model, twin)
        lerped_model.stacked.expert_counts.copy_(counts["stacked"])
        lerped_model.listed.expert_counts.copy_(counts["listed"])
        fused.step()
        lerped.step()
        plain.step()
        assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))  # given back
        if strategy == "random":  # a permutation of zero_sum drawn by the wrapper: the same draw in both
            factors = dict(zip(("stacked", "listed"), fused.last_factors, strict=True))
            for phi, c in zip(fused.last_factors, counts.values(), strict=True):
                reference = reference_factors(c, "zero_sum", 1.5).float()
                torch.testing.assert_close(phi.sort().values, reference.sort().values)
            assert all(torch.equal(a, b) for a, b in zip(fused.last_factors, lerped.last_factors, strict=True))
        else:
            factors = {k: reference_factors(c, strategy, 1.5).float() for k, c in counts.items()}
        expected = expected_params(model, old, dict(plain_model.named_parameters()), factors)
        for (name, p), q in zip(model.named_parameters(), lerped_model.parameters(), strict=True):
            if name.startswith(EXPERT):
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)
                torch.testing.assert_close(p, expected[name], rtol=1e-6, atol=1e-6, msg=name)
                differs |= not torch.equal(p, q)
            else:
                assert torch.equal(p, q) and torch.equal(p, expected[name]), name
        sf, sl = fused.optimizer.state_dict()["state"], lerped.optimizer.state_dict()["state"]
        assert sf.keys() == sl.keys()
        for i in sf:
            assert sf[i].keys() == sl[i].keys()
            for key, value in sf[i].items():
                assert value.dtype == sl[i][key].dtype and torch.equal(value, sl[i][key]), (i, key)
    assert differs  # the two paths did compute differently (float rounding), so both were exercised


def test_unknown_optimizers_and_unsupported_options_keep_the_exact_fallback():
    class MySGD(torch.optim.SGD):  # a subclass may change the step: not matched
        pass

    def run(make, fused):
        torch.manual_seed(0)
        model = ToyModel()
        ex = Excitation(make(model), model, gamma=1.5, fused=fused)
        for step in range(3):
            ex.zero_grad()
            F.mse_loss(model(*batch(step)[:1], ROUTES[step]), batch(step)[1]).backward()
            ex.step()
        return ex, list(model.parameters())

    makes = {
        "subclass": lambda m: MySGD(m.parameters(), lr=0.1, momentum=0.9),
        "adamax": lambda m: torch.optim.Adamax(m.parameters(), lr=0.01),
        "tensor lr": lambda m: torch.optim.Adam(m.parameters(), lr=torch.tensor(0.01)),
        "fused kernel": lambda m: torch.optim.AdamW(m.parameters(), lr=0.01, fused=True),
    }
    for what, make in makes.items():
        ex, params = run(make, True)
        assert all(fused_step(ex.optimizer, g) is None for g in ex.param_groups), what
        _, exact = run(make, False)
        assert all(torch.equal(p, q) for p, q in zip(params, exact, strict=True)), what
    assert fused_types() == ["Adagrad", "Adam", "AdamW", "RMSprop", "SGD"]


def test_the_choice_is_made_per_param_group():
    """Stacked experts in a group the fused step handles, listed experts in one it does not (a tensor lr):
    both follow the reference rule in the same step."""
    torch.manual_seed(0)
    model = ToyModel()
    twin = copy.deepcopy(model)

    def groups(m):
        listed = list(m.listed.experts.parameters())
        rest = [p for p in m.parameters() if all(p is not q for q in listed)]
        return [{"params": rest}, {"params": listed, "lr": torch.tensor(0.02)}]

    ex = Excitation(torch.optim.Adam(groups(model), lr=0.01), model)
    plain = torch.optim.Adam(groups(twin), lr=0.01)
    assert [fused_step(ex.optimizer, g) is not None for g in ex.param_groups] == [True, False]
    for step in range(3):
        ex.zero_grad()
        x, y = batch(step)
        F.mse_loss(model(x, ROUTES[step]), y).backward()
        counts = {"stacked": model.stacked.expert_counts.clone(), "listed": model.listed.expert_counts.clone()}
        old = {name: p.detach().clone() for name, p in model.named_parameters()}
        grads_from(model, twin)
        ex.step()
        plain.step()
        factors = {k: reference_factors(c, "zero_sum").float() for k, c in counts.items()}
        expected = expected_params(model, old, dict(twin.named_parameters()), factors)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p, expected[name], rtol=1e-6, atol=1e-6, msg=name)


def test_gradients_are_given_back_when_the_base_step_raises():
    torch.manual_seed(0)
    model = ToyModel()
    ex = Excitation(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model)
    x, y = batch(0)
    F.mse_loss(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]

    def fail(optimizer, args, kwargs):
        raise RuntimeError("a hook of the base optimizer failed")

    handle = ex.optimizer.register_step_pre_hook(fail)
    with pytest.raises(RuntimeError, match="hook of the base optimizer"):
        ex.step()
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    handle.remove()
    ex.step()  # and the next step runs normally
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))


def test_attached_step_with_a_closure_takes_the_fallback_and_steps_once():
    """Under attach() a closure computes the gradients inside the base step, after the pre hook: that
    step takes the fallback (bit-identical to the wrapper's fallback), not a second fused step."""

    def run(attach):
        torch.manual_seed(0)
        model = ToyModel()
        base = torch.optim.Adam(model.parameters(), lr=0.01)
        ex = Excitation.attach(base, model) if attach else Excitation(base, model, fused=False)
        for step in range(3):
            x, y = batch(step)

            def closure(x=x, y=y, routes=ROUTES[step]):
                base.zero_grad()
                loss = F.mse_loss(model(x, routes), y)
                loss.backward()
                return loss

            (base if attach else ex).step(closure)
        return list(model.parameters())

    assert all(torch.equal(p, q) for p, q in zip(run(True), run(False), strict=True))


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("optimizer", list(FAST))
def test_tensor_and_float_factors_give_the_same_step(optimizer, stacked):
    """Factors on the CPU enter as Python floats (slice by slice for a stacked tensor), elsewhere as a
    tensor (no host synchronisation): the same step to rounding, the same state bit for bit, and at
    Phi = 1 the tensor form is the plain optimizer's step bit for bit."""
    torch.manual_seed(0)
    first = torch.randn(4, 3, 5)
    params = [torch.nn.Parameter(first.clone()) for _ in range(4)]  # tensor Phi, float Phi, tensor 1, plain
    optimizers = [FAST[optimizer]([p]) for p in params]
    step = fused_step(optimizers[0], optimizers[0].param_groups[0])
    phi = torch.tensor([0.0, 0.5, 1.0, 2.0])
    if stacked:
        weights = [phi.view(4, 1, 1), phi.tolist(), torch.ones(4, 1, 1)]
    else:
        weights = [phi[1], phi[1].item(), torch.ones(())]
    for _ in range(3):
        grad = torch.randn(4, 3, 5)
        with torch.no_grad():
            params[0].copy_(params[1])  # from the same values, so that the states can be compared bitwise
            for p in params:
                p.grad = grad.clone()
            for p, o, w in zip(params, optimizers, weights, strict=False):
                step(o, o.param_groups[0], p, p.grad, w)
        optimizers[3].step()
        torch.testing.assert_close(params[0], params[1], rtol=1e-6, atol=1e-7)
        assert torch.equal(params[2], params[3])
        states = [o.state_dict()["state"].get(0, {}) for o in optimizers]  # SGD without momentum: none
        for key, value in states[3].items():
            assert all(torch.equal(s[key], value) for s in states[2:]), key
            assert torch.equal(states[0][key], states[1][key]), key


def test_a_registered_fused_step_is_used_for_the_groups_it_supports(monkeypatch):
    import seeking.excitation.fused as fused_module

    class PlainSGD(torch.optim.SGD):
        pass

    monkeypatch.setattr(fused_module, "_FUSED", dict(fused_module._FUSED))
    sgd_step = fused_module._FUSED[torch.optim.SGD].step
    fused_module.register_fused(PlainSGD, supports=lambda group: group["momentum"] == 0)(sgd_step)
    with pytest.raises(ValueError, match="registered twice"):
        fused_module.register_fused(PlainSGD)(sgd_step)
    model = ToyModel()
    optimizer = PlainSGD(
        [{"params": model.stacked.parameters()}, {"params": model.listed.parameters(), "momentum": 0.9}]
    )
    assert [fused_step(optimizer, g) for g in optimizer.param_groups] == [sgd_step, None]
    assert "PlainSGD" in fused_types()
