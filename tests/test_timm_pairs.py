"""Weights maps for timm pairs: ResNet depth growth, EfficientNet depth and width growth, ViT
depth growth and width growth with more heads (or wider heads), all built without weights."""

import pytest
import torch
from helpers import motivated_steps, sgd

from seeking import ConfigError, Motivator, Never, WeightMap, create_model

DATA = {"num_classes": 10, "in_channels": 3, "image_size": [32, 32]}
VIT = {"patch_size": 8}


def pair(base, motivated, base_kwargs=None, motivated_kwargs=None):
    torch.manual_seed(0)
    b = create_model(base, **DATA, **(base_kwargs or {}))
    torch.manual_seed(1)
    return b, create_model(motivated, **DATA, **(motivated_kwargs or {}))


def max_diff(a, b, x):
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item()


@pytest.mark.parametrize(
    "base,motivated,base_kwargs,motivated_kwargs",
    [
        ("resnet18", "resnet34", {}, {}),
        ("efficientnet_b0", "efficientnet_b1", {}, {}),  # b1 = b0 with 1.1x depth, same widths
        ("vit_tiny_patch16_224", "vit_tiny_patch16_224", {**VIT, "depth": 2}, {**VIT, "depth": 4}),
    ],
)
def test_depth_growth_preserves_the_function(base, motivated, base_kwargs, motivated_kwargs):
    x = torch.randn(4, 3, 32, 32)
    for preserve in (True, False):
        b, m = pair(base, motivated, base_kwargs, motivated_kwargs)
        b.train()(torch.randn(16, 3, 32, 32) * 2 + 0.5)  # non-trivial BatchNorm statistics
        with torch.no_grad():  # timm zero-initialises some last layers itself: undo that
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        motivator = Motivator(b, m, Never(), sgd(b), sgd(m), preserve_function=preserve)
        if preserve:
            assert motivator.added_blocks, "the motivated model should have added blocks"
            assert max_diff(b, m, x) < 1e-5
        else:  # the control: without the identity initialisation the functions differ
            assert max_diff(b, m, x) > 1e-2


def test_resnet18_in_resnet34_blocks():
    b, m = pair("resnet18", "resnet34")
    wmap = WeightMap.infer(b, m)
    assert {e.base for e in wmap.entries} == set(b.state_dict())
    assert all(not e.index for e in wmap.entries)  # depth growth: whole tensors
    added = wmap.init_extra_capacity(m)
    # resnet34 has 3, 4, 6, 3 blocks a stage; resnet18 2 each
    assert added == ["layer1.2", "layer2.2", "layer2.3", *(f"layer3.{i}" for i in range(2, 6)), "layer4.2"]


def test_efficientnet_b0_in_b2_maps_every_tensor_onto_a_leading_region():
    b, m = pair("efficientnet_b0", "efficientnet_b2")
    wmap = WeightMap.infer(b, m)
    assert {e.base for e in wmap.entries} == set(b.state_dict())
    big = m.state_dict()
    by_name = {e.base: e for e in wmap.entries}
    # stage 2 grows from 40 to 48 channels (240 to 288 expanded); its depthwise conv keeps its (C, 1, k, k) layout
    dw = by_name["blocks.2.1.conv_dw.weight"]
    assert b.state_dict()[dw.base].shape[0] < big[dw.motivated].shape[0]
    assert dw.index[0].stop == b.state_dict()[dw.base].shape[0] and dw.index[1].stop == 1
    # squeeze-excitation and the classifier grow too
    assert by_name["blocks.2.1.se.conv_reduce.weight"].index
    assert by_name["classifier.weight"].index == (slice(0, 10), slice(0, 1280))
    # b2 has more blocks a stage: the extra ones are listed as extra capacity
    assert any(name.startswith("blocks.1.2.") for name in wmap.extra)
    wmap.copy(b, m, "to_motivated", buffers=True)
    for e in wmap.entries:
        assert torch.equal(e.region(big[e.motivated]), e.source(b.state_dict()[e.base]))
    # added blocks start as the identity even though the widths differ
    assert "blocks.1.2" in wmap.init_extra_capacity(m)
    assert torch.count_nonzero(m.blocks[1][2].bn3.weight) == 0


def test_vit_qkv_and_output_projection_are_mapped_per_head():
    # tiny: 3 heads of 64 in width 192; small: 6 heads of 64 in width 384 (and one more block)
    b, m = pair("vit_tiny_patch16_224", "vit_small_patch16_224", {**VIT, "depth": 2}, {**VIT, "depth": 3})
    wmap = WeightMap.infer(b, m)
    wmap.copy(b, m, "to_motivated", buffers=True)
    bq, mq = b.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight
    for part in range(3):  # queries onto queries, keys onto keys, values onto values
        assert torch.equal(mq[part * 384 : part * 384 + 192, :192], bq[part * 192 : (part + 1) * 192])
    # the output projection's inputs are the heads' outputs: the base's map onto the first 3 heads
    assert torch.equal(m.blocks[0].attn.proj.weight[:192, :192], b.blocks[0].attn.proj.weight)
    assert "blocks.2.attn.qkv.weight" in wmap.extra
    assert "of view (3, 6, 64, 384)" in str(wmap)


def test_vit_wider_heads_map_onto_the_leading_features_of_each_head():
    # same 3 heads, head size 64 -> 128: a naive leading slice would put base head 1 into head 0
    vit = "vit_tiny_patch16_224"
    b, m = pair(vit, vit, {**VIT, "depth": 1}, {**VIT, "depth": 1, "embed_dim": 384})
    wmap = WeightMap.infer(b, m)
    wmap.copy(b, m, "to_motivated", buffers=True)
    bq, mq = b.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight
    for part in range(3):
        for head in range(3):
            rows_m = slice(part * 384 + head * 128, part * 384 + head * 128 + 64)
            rows_b = slice(part * 192 + head * 64, part * 192 + (head + 1) * 64)
            assert torch.equal(mq[rows_m, :192], bq[rows_b])
    pw_b, pw_m = b.blocks[0].attn.proj.weight, m.blocks[0].attn.proj.weight
    for head in range(3):
        assert torch.equal(pw_m[:192, head * 128 : head * 128 + 64], pw_b[:, head * 64 : (head + 1) * 64])


def train_steps(sync, steps=8):
    b, m = pair("vit_tiny_patch16_224", "vit_small_patch16_224", {**VIT, "depth": 1}, {**VIT, "depth": 2})
    return b, m, motivated_steps(b, m, sync, steps=steps, shape=(8, 3, 32, 32))


def test_vit_zero_copy_sharing_gives_the_same_result_as_copying():
    copied, shared = train_steps("copy"), train_steps("share")
    assert copied[2].switches >= 2 and shared[2].map.aliased  # something was really shared
    for a, b in ((copied[0], shared[0]), (copied[1], shared[1])):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_timm_pairs_that_cannot_work():
    b, m = pair("resnet18", "resnet34")
    with pytest.raises(ConfigError, match="must be smaller"):
        WeightMap.infer(m, b)
    e, r = pair("efficientnet_b0", "resnet34")
    with pytest.raises(ConfigError, match=r"'conv_stem.weight'.*no tensor of that name"):
        WeightMap.infer(e, r)
    # more heads in the base than in the motivated model: heads must fit inside heads
    vit = "vit_tiny_patch16_224"
    vb, vm = pair(vit, vit, {**VIT, "depth": 1, "num_heads": 6}, {**VIT, "depth": 2})
    with pytest.raises(ConfigError, match=r"'blocks\.0\.attn\.qkv\.weight'.*heads inside heads"):
        WeightMap.infer(vb, vm)


def test_timm_names_build_through_the_registry():
    vit = create_model("vit_tiny_patch16_224", num_classes=7, in_channels=1, image_size=[16, 16], patch_size=4)
    assert vit(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    cnn = create_model("resnet18", num_classes=7, in_channels=1, image_size=[16, 16])  # no img_size argument
    assert cnn(torch.randn(2, 1, 16, 16)).shape == (2, 7) and cnn.cfg["num_classes"] == 7
    with pytest.raises(ConfigError, match="unknown model 'resnet_nonexistent'"):
        create_model("resnet_nonexistent")
