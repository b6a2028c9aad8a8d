import itertools

import pytest
import safetensors.torch
import torch
from helpers import motivated_steps

import seeking.training.loop as loop
from seeking import ConfigError, TrainConfig, create_model, evaluate, load_dataset, load_model, train
from seeking.motivation.batchnorm import deployable_copy, recalibrate_batchnorm
from seeking.training.checkpoint import load_state


def test_recalibration_is_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3, momentum=0.3)).eval()
    model[1].running_mean.fill_(9.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    inputs = [torch.randn(4, 2, 5, 5) + i for i in range(3)]
    assert recalibrate_batchnorm(model, inputs) == 3
    with torch.no_grad():
        features = [model[0](x) for x in inputs]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means)
    torch.testing.assert_close(model[1].running_var, variances)
    assert model[1].momentum == 0.3 and not model.training  # restored
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())  # weights untouched


MODEL_NAMES = {"base": "resnet20", "motivated": "resnet32"}


def test_deployable_copies_are_re_estimated_alone_and_leave_training_untouched():
    torch.manual_seed(0)
    base, large = create_model("resnet20"), create_model("resnet32")
    # zero-copy sharing and shared statistics: the base's mapped buffers are views of the large model's
    motivator = motivated_steps(base, large, "share", steps=6, shape=(16, 3, 8, 8), batchnorm="shared")
    live = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in motivator.models.items()}
    calibration = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    deployed = motivator.deployable(iter(calibration))  # an iterator serves both models
    for name, model in deployed.items():
        assert all(torch.equal(v, live[name][k]) for k, v in motivator.models[name].state_dict().items())
        alone = create_model(MODEL_NAMES[name])  # an independent model with the same state
        alone.load_state_dict(live[name])
        recalibrate_batchnorm(alone, calibration)
        expected = alone.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items()), name
        owned = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
        assert not owned & {t.untyped_storage().data_ptr() for t in motivator.models["motivated"].state_dict().values()}
        assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(deployed["base"].bn1.running_mean, motivator.models["base"].bn1.running_mean)
    kept = motivator.deployable(None)  # statistics as they are
    assert all(torch.equal(v, live["base"][k]) for k, v in kept["base"].state_dict().items())


def test_re_estimation_refuses_an_empty_calibration():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    with pytest.raises(ConfigError, match="no calibration batch"):
        recalibrate_batchnorm(model, iter([]))
    assert model.training and model[1].momentum == 0.1  # restored
    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), iter([])) == 0  # nothing to re-estimate


# Each combination of weight sync, BatchNorm policy and re-estimation: 4 steps of training.
TINY = dict(data="digits", train_subset=128, test_subset=60, epochs=1, batch_size=32, lr=0.05, k=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", progress=False)


COMBINATIONS = list(itertools.product(("copy", "share"), ("separate", "shared"), (0, 2)))


@pytest.fixture(scope="module")
def combination_runs(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("combinations")
    return {
        (sync, batchnorm, recalibrate): train(
            TrainConfig(**TINY, sync=sync, batchnorm=batchnorm, bn_recalibrate=recalibrate),
            root / f"{sync}-{batchnorm}-{recalibrate}",
            progress=False,
            log=lambda line: None,
            dataset=digits,
        )
        for sync, batchnorm, recalibrate in COMBINATIONS
    }


def saved(run, name):
    return safetensors.torch.load_file(run.run_dir / run.summary["models"][name]["checkpoint"])


def same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: "-".join(map(str, c)))
def test_saved_models_score_what_the_run_reported(combination_runs, digits, combination):
    run = combination_runs[combination]
    test = digits.test.subset(60, seed=0)
    for name, reported in run.summary["models"].items():
        model, meta = load_model(
            run.run_dir / run.summary["models"][name]["checkpoint"]
        )  # what `seeking evaluate` does
        again = evaluate(model, test, meta["extra"]["mean"], meta["extra"]["std"])
        assert (again["accuracy"], again["loss"]) == (reported["accuracy"], reported["loss"]), name


def test_sync_and_statistics_policies_change_only_what_they_should(combination_runs):
    runs = combination_runs
    for name in ("base", "motivated"):
        for batchnorm, recalibrate in itertools.product(("separate", "shared"), (0, 2)):
            # zero-copy sharing gives the same models as copying, statistics included
            copied, shared = (saved(runs[sync, batchnorm, recalibrate], name) for sync in ("copy", "share"))
            assert same_tensors(copied, shared), (name, batchnorm, recalibrate)
        # running statistics do not enter training: the policy changes no weight, and no re-estimated statistic
        assert same_tensors(saved(runs["copy", "separate", 2], name), saved(runs["copy", "shared", 2], name))
        as_trained = [saved(runs["copy", policy, 0], name) for policy in ("separate", "shared")]
        assert not same_tensors(*as_trained)
        weights = [
            {k: v for k, v in s.items() if "running" not in k and "batches_tracked" not in k} for s in as_trained
        ]
        assert same_tensors(*weights)


def test_a_default_run_saves_models_with_re_estimated_statistics(tmp_path, digits, monkeypatch):
    calibrations = []

    def recording(model, calibration):
        calibrations.append(list(calibration))
        return deployable_copy(model, calibrations[-1])

    monkeypatch.setattr(loop, "deployable_copy", recording)
    sizes = {k: v for k, v in TINY.items() if k not in ("k", "lr")}  # every policy at its default
    run = train(TrainConfig(**sizes), tmp_path / "run", progress=False, log=lambda line: None, dataset=digits)
    live = load_state(next((run.run_dir / "checkpoints").iterdir()))["models"]  # the models as trained
    assert [len(c) for c in calibrations] == [4, 4]  # the default N, capped by one epoch of 4 batches
    for (name, trained), calibration in zip(live.items(), calibrations, strict=True):
        alone = create_model(MODEL_NAMES[name], num_classes=10, in_channels=1)
        alone.load_state_dict(trained)
        assert calibration[0].shape == (32, 1, 8, 8)
        recalibrate_batchnorm(alone, calibration)
        saved = safetensors.torch.load_file(run.run_dir / run.summary["models"][name]["checkpoint"])
        assert all(torch.equal(v, saved[k]) for k, v in alone.state_dict().items()), name
        assert not torch.equal(saved["bn1.running_var"], trained["bn1.running_var"])  # not the statistics as trained
