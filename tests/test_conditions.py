import math

import pytest

from seeking import Always, ConfigError, ConsecutiveDecrease, Never, RandomPlacement, RandomRate
from seeking.motivation import make_condition


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
