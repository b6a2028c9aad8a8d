"""Random configurations and files thrown at the parsers and loaders: each input either works or
fails with the project's own error type (never a bare TypeError, ValueError, KeyError...)."""

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seeking import ConfigError, SeekingError, TrainConfig
from seeking.data import load_dataset
from seeking.model_file import read_model_file
from seeking.training.excite import ExciteConfig

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), st.integers(), max_size=2),
)


def configs(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    keys = st.sampled_from([*names, "bogus", "learning_rate"])
    return st.dictionaries(keys, VALUES, max_size=4)


def works_or_says_why(cls, values):
    try:
        config = cls.from_dict(values)
    except SeekingError as exc:
        assert str(exc)  # one message that names the problem
    else:
        assert isinstance(config, cls)


@settings(max_examples=150, deadline=None)
@given(configs(TrainConfig))
def test_random_training_configs(values):
    works_or_says_why(TrainConfig, values)


@settings(max_examples=150, deadline=None)
@given(configs(ExciteConfig))
def test_random_excitation_configs(values):
    works_or_says_why(ExciteConfig, values)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.sampled_from(["model.safetensors", "data.tar.gz", "cifar-10-python.tar.gz"]))
def test_random_files_are_refused_with_the_projects_errors(tmp_path, blob, name):
    path = tmp_path / name
    path.write_bytes(blob)
    try:
        if name.endswith(".safetensors"):
            read_model_file(path)
        else:
            load_dataset(str(path), cache_dir=tmp_path / "cache")
    except SeekingError as exc:
        assert str(exc)


def test_the_cases_the_properties_rest_on():
    for cls in (TrainConfig, ExciteConfig):
        with pytest.raises(ConfigError, match=r"^lr must be a finite number, got nan$"):
            cls.from_dict({"lr": math.nan})  # NaN passes every range check: the type check refuses it
        with pytest.raises(ConfigError, match="must be a mapping"):
            cls.from_dict([("lr", 0.1)])
        with pytest.raises(ConfigError, match="unknown configuration key"):
            cls.from_dict({"learning_rate": 0.1, 3: 1})
