import math

import pytest

from seeking import Always, ConfigError, ConsecutiveDecrease, Never, RandomRate
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
    for make in (lambda: ConsecutiveDecrease(k=2), lambda: RandomRate(0.3, seed=7)):
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
