import torch

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
