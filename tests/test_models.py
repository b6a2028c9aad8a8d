import pytest
import torch

from seeking import ConfigError, create_model, list_models


@pytest.mark.parametrize(
    "name,depth", [("resnet20", 20), ("resnet32", 32), ("resnet44", 44), ("resnet56", 56), ("resnet110", 110)]
)
def test_factory_builds_each_depth(name, depth):
    model = create_model(name, num_classes=7, in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n+1 convolutions and the classifier
    assert model.cfg["depth"] == depth and model.cfg["blocks"] == [(depth - 2) // 6] * 3
    assert model(torch.randn(2, 1, 12, 12)).shape == (2, 7)


def test_parameter_count_matches_he_et_al():
    # He et al. 2016, table 6: ResNet-20 0.27M, ResNet-32 0.46M, ResNet-56 0.85M parameters.
    counts = {n: sum(p.numel() for p in create_model(n).parameters()) for n in ("resnet20", "resnet32", "resnet56")}
    assert round(counts["resnet20"] / 1e6, 2) == 0.27
    assert round(counts["resnet32"] / 1e6, 2) == 0.46
    assert round(counts["resnet56"] / 1e6, 2) == 0.85


def test_any_input_size():
    model = create_model("resnet20").eval()
    for size in (8, 32, 40):
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)


def test_unknown_model_and_bad_depth():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet21'.*resnet20"):
        create_model("resnet21")
    from seeking.models import CifarResNet

    with pytest.raises(ConfigError, match=r"6n\+2"):
        CifarResNet(depth=21)
    assert "resnet110" in list_models()
