"""Paired statistics: the t interval against independent computations, one seed and none said so."""

import math

import pytest
from scipy import stats

from seeking.reporting.stats import interval_fields, interval_text, mean_interval, paired_differences, paired_interval


def test_the_interval_of_four_values_matches_a_hand_computation_from_the_t_table():
    # mean 2.5, sample sd sqrt(5/3); t(0.975, 3 degrees of freedom) = 3.18244630528 from printed t tables
    interval = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.1824463052842638 * math.sqrt(5 / 3) / 2
    assert interval.n == 4 and interval.mean == 2.5 and interval.std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert interval.low == pytest.approx(2.5 - half, rel=1e-12) and interval.high == pytest.approx(
        2.5 + half, rel=1e-12
    )
    assert interval.excludes_zero()  # [0.446, 4.554]


def test_the_paired_interval_matches_scipys_paired_t_test():
    arm = {0: 46.1, 1: 47.9, 2: 45.2, 3: 46.6, 4: 48.0, 9: 50.0}  # seed 9 has no partner: left out
    plain = {0: 44.0, 1: 45.5, 2: 45.0, 3: 43.9, 4: 46.2, 5: 40.0}
    seeds = [0, 1, 2, 3, 4]
    reference = stats.ttest_rel([arm[s] for s in seeds], [plain[s] for s in seeds]).confidence_interval(0.95)
    interval = paired_interval(arm, plain)
    assert interval.n == 5 and list(paired_differences(arm, plain)) == seeds
    assert interval.low == pytest.approx(reference.low, rel=1e-12)
    assert interval.high == pytest.approx(reference.high, rel=1e-12)
    assert interval_text(interval) == f"+1.84 [{reference.low:+.2f}, {reference.high:+.2f}]"


def test_one_seed_has_no_interval_and_says_so_and_none_is_a_dash():
    one = paired_interval({0: 3.0, 1: math.nan}, {0: 1.0, 1: 2.0})  # a NaN seed is not counted
    assert (one.n, one.mean, one.low, one.high, one.std) == (1, 2.0, None, None, None)
    assert interval_text(one) == "+2.00 (n=1: no interval)" and not one.excludes_zero()
    none = paired_interval({0: 1.0}, {1: 1.0})
    assert none.n == 0 and math.isnan(none.mean) and interval_text(none) == "-"
    assert interval_fields(one, "acc") == {"acc": 2.0, "acc ci low": None, "acc ci high": None, "acc n": 1}


def test_identical_differences_give_a_zero_width_interval_and_a_bad_level_is_refused():
    interval = mean_interval([0.5, 0.5, 0.5])
    assert (interval.low, interval.high, interval.half_width) == (0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match="confidence level"):
        mean_interval([1.0, 2.0], level=95)
