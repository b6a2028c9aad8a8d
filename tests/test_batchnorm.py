import pytest
import safetensors.torch
import torch

from seeking import TrainConfig, evaluate, load_dataset, load_model, train
from seeking.training.batchnorm import recalibrate_batchnorm


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


# Each combination of weight sync, BatchNorm policy and re-estimation: 2 steps of training.
TINY = dict(data="digits", train_subset=128, test_subset=60, epochs=1, batch_size=32, lr=0.05, k=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", progress=False)


@pytest.mark.parametrize("recalibrate", [0, 2])
@pytest.mark.parametrize("batchnorm", ["separate", "shared"])
def test_saved_models_score_what_the_run_reported(tmp_path, digits, batchnorm, recalibrate):
    runs = {
        sync: train(
            TrainConfig(**TINY, sync=sync, batchnorm=batchnorm, bn_recalibrate=recalibrate),
            tmp_path / sync,
            progress=False,
            log=lambda line: None,
            dataset=digits,
        )
        for sync in ("copy", "share")
    }
    test = digits.test.subset(60, seed=0)
    for sync, run in runs.items():
        for name, reported in run.summary["models"].items():
            model, meta = load_model(run.run_dir / f"{name}.safetensors")  # what `seeking evaluate` does
            again = evaluate(model, test, meta["extra"]["mean"], meta["extra"]["std"])
            assert (again["accuracy"], again["loss"]) == (reported["accuracy"], reported["loss"]), (sync, name)
    # zero-copy sharing gives the same models as copying, statistics included
    for name in ("base", "motivated"):
        copied, shared = (safetensors.torch.load_file(runs[s].run_dir / f"{name}.safetensors") for s in runs)
        assert copied.keys() == shared.keys()
        assert all(torch.equal(copied[k], shared[k]) for k in copied), name
