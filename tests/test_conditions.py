import math

import pytest

from seeking import Always, ConfigError, ConsecutiveDecrease, Never, RandomPlacement, RandomRate
from seeking.motivation import (
    CONDITIONS,
    ROLES,
    Condition,
    classical_condition,
    make_condition,
    register_condition,
)


def trace(condition, losses):
    """Which model each loss's *next* batch trains (1 = motivated)."""
    out = []
    for loss in losses:
        condition.update(loss)
        out.append(int(condition.motivated))
    return out


def test_enters_after_k_strict_decreases_and_leaves_at_first_non_decrease():
    losses = [5, 4, 3, 2, 2, 1, 0.5, 0.4, 0.6, 0.5]
    #          -  d  d  d  =  d  d    d    up   d
    assert trace(ConsecutiveDecrease(k=2), losses) == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    assert trace(ConsecutiveDecrease(k=1), losses) == [0, 1, 1, 1, 0, 1, 1, 1, 0, 1]
    assert trace(ConsecutiveDecrease(k=3), losses) == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]


def test_equal_loss_is_not_a_decrease():
    assert trace(ConsecutiveDecrease(k=1), [1.0, 1.0, 1.0]) == [0, 0, 0]


def test_non_finite_loss_never_enters_history():
    c = ConsecutiveDecrease(k=2)
    assert trace(c, [3, 2, 1, math.nan, 5, 4, 3]) == [0, 0, 1, 0, 0, 0, 1]
    assert c.previous == 3


def test_state_dict_round_trip_continues_identically():
    losses = [5, 4, 3, 3.5, 3, 2, 1, 1.5, 1.2, 1.1, 1.0, 0.9]
    makers = (lambda: ConsecutiveDecrease(k=2), lambda: RandomRate(0.3, seed=7), lambda: RandomPlacement(4, 13, seed=7))
    for make in makers:
        whole = trace(make(), losses)
        first = make()
        head = trace(first, losses[:5])
        second = make()
        second.load_state_dict(first.state_dict())
        assert head + trace(second, losses[5:]) == whole


def test_random_rate_fires_at_its_rate_and_ignores_the_loss():
    c = RandomRate(0.25, seed=1)
    fired = trace(c, [1.0] * 20000)
    assert abs(sum(fired) / len(fired) - 0.25) < 0.01
    assert trace(RandomRate(0.25, seed=1), range(20000)) == fired


def test_never_and_always():
    assert trace(Never(), [3, 2, 1, 0]) == [0, 0, 0, 0]
    assert Always().motivated and trace(Always(), [0, 1, 2]) == [1, 1, 1]


def test_bad_arguments():
    for k in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="k >= 1"):
            ConsecutiveDecrease(k)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        RandomRate(1.5)
    with pytest.raises(ConfigError, match="unknown condition"):
        make_condition("sometimes")
    with pytest.raises(ConfigError, match="k=3"):
        ConsecutiveDecrease(2).load_state_dict(ConsecutiveDecrease(3).state_dict())


def placement(condition, total):
    """Which of ``total`` steps train the motivated model: the decision at start, then one per update."""
    decided = [int(condition.motivated)]
    return decided + trace(condition, [1.0] * (total - 1))


@pytest.mark.parametrize(("count", "total"), [(9, 93), (21, 93), (3, 12), (0, 12), (12, 12), (1, 1)])
def test_random_placement_trains_the_motivated_model_on_exactly_count_steps(count, total):
    for seed in range(20):
        steps = placement(RandomPlacement(count, total, seed=seed), total)
        assert sum(steps) == count, (seed, steps)
    c = RandomPlacement(count, total)
    placement(c, total)
    assert trace(c, [1.0] * 5) == [0] * 5  # past the planned steps: the base


def test_random_placement_draws_every_position_alike_and_ignores_the_loss():
    # every placement equally likely: each step is motivated in count/total of the runs (binomial, 4000 runs)
    count, total, runs = 3, 12, 4000
    hits = [0] * total
    for seed in range(runs):
        for i, motivated in enumerate(placement(RandomPlacement(count, total, seed=seed), total)):
            hits[i] += motivated
    expected = runs * count / total
    assert all(abs(h - expected) < 5 * math.sqrt(expected * (1 - count / total)) for h in hits), hits
    losses = [5, 4, 3, 2, 9, 1, 1, 0, 7, 6, 5]
    assert trace(RandomPlacement(3, 12, seed=5), losses) == trace(RandomPlacement(3, 12, seed=5), [1.0] * 11)


def test_the_random_condition_of_a_run_is_the_exact_placement():
    c = make_condition("random", p=21 / 93, seed=1, total=93)
    assert isinstance(c, RandomPlacement) and (c.count, c.total) == (21, 93)
    assert c.p == pytest.approx(21 / 93)
    with pytest.raises(ConfigError, match="total steps"):
        make_condition("random", p=0.2)
    with pytest.raises(ConfigError, match="count in"):
        RandomPlacement(13, 12)
    with pytest.raises(ConfigError, match="saved for 3 of 12 steps"):
        RandomPlacement(4, 12).load_state_dict(RandomPlacement(3, 12).state_dict())


class EveryOther(Condition):
    """A user's condition: the motivated model trains every ``every``-th step, counted in its state."""

    name = "every_other"
    reads_loss = False

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every, self.seen = every, 0

    @classmethod
    def from_options(cls, *, k, p, seed, total):
        return cls(k)

    def update(self, loss):
        self.seen += 1
        self.motivated = self.seen % self.every == 0

    def state_dict(self):
        return {**super().state_dict(), "seen": self.seen}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.seen = state["seen"]


@pytest.fixture
def registered():
    """EveryOther in the registry for one test, and out of it afterwards whatever happens."""
    register_condition(EveryOther)
    yield EveryOther
    del CONDITIONS[EveryOther.name]


def test_a_registered_user_condition_is_built_by_name_and_resumes(registered):
    condition = make_condition("every_other", k=3)
    assert type(condition) is registered and condition.roles == ROLES
    assert trace(condition, [1.0] * 7) == [0, 0, 1, 0, 0, 1, 0]
    resumed = make_condition("every_other", k=3)
    resumed.load_state_dict(condition.state_dict())
    assert trace(resumed, [1.0] * 3) == trace(condition, [1.0] * 3) == [0, 1, 0]


def test_registering_refuses_a_taken_or_missing_name_and_bad_roles(registered):
    with pytest.raises(ConfigError, match=r"'every_other' is already registered \(by EveryOther\): give Again"):
        register_condition(type("Again", (EveryOther,), {}))
    with pytest.raises(ConfigError, match="Nameless has no name"):
        register_condition(type("Nameless", (Condition,), {}))
    with pytest.raises(ConfigError, match=r"roles=\('large',\)"):
        register_condition(type("Odd", (Condition,), {"name": "odd", "roles": ("large",)}))
    with pytest.raises(ConfigError, match="trains only 'base', as the registered condition 'never' does"):
        register_condition(type("Idle", (Condition,), {"name": "idle", "roles": ("base",)}))
    with pytest.raises(ConfigError, match="registers Condition subclasses"):
        register_condition(int)
    assert list(CONDITIONS) == ["decrease", "never", "always", "random", "trend", "budget", "value", "every_other"]


def test_roles_say_which_models_a_condition_trains():
    assert {name: cls.roles for name, cls in CONDITIONS.items()} == {
        "decrease": ("base", "motivated"),
        "never": ("base",),
        "always": ("motivated",),
        "random": ("base", "motivated"),
        "trend": ("base", "motivated"),
        "budget": ("base", "motivated"),
        "value": ("base", "motivated"),
    }
    # a single-role condition's models are the ones it trains: its decision never changes
    for role in ROLES:
        condition = make_condition(classical_condition(role))
        assert condition.roles == (role,)
        assert trace(condition, [3, 2, 1, 0]) == [int(role == "motivated")] * 4
    assert (classical_condition("base"), classical_condition("motivated")) == ("never", "always")
    with pytest.raises(ConfigError, match="unknown role 'large'; the roles are base, motivated"):
        classical_condition("large")
