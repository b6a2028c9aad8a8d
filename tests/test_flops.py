"""FLOP counts against closed-form counts written out here, forward and training step, within 1%.

The convention (``seeking.flops.FLOPS_CONVENTION``): 2 FLOPs per multiply-add of products
and convolutions, element-wise work not counted; the backward repeats each weight-bearing op's
multiply-adds once for the weight gradient and once for the input gradient, the latter only where
an input needs it. So a block whose input needs a gradient costs ``3 x forward`` per training step,
a whole network ``3 x forward - its first layer's forward`` (no gradient for the data batch).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from seeking.flops import count_flops, train_step_flops
from seeking.moe.block import SelfAttention
from seeking.moe.layer import MoEFeedForward

timm = pytest.importorskip("timm")


def forward_and_step(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[int, int]:
    """FLOPs of ``module(x)`` and of its forward + backward, with ``x`` needing a gradient."""
    x = x.clone().requires_grad_()
    return count_flops(lambda: module(x)), count_flops(lambda: module(x).sum().backward())


def assert_within_1pct(measured: int, expected: int) -> None:
    assert measured == pytest.approx(expected, rel=0.01)


def test_dense_conv_net_training_step():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten()
    )
    net.append(nn.Linear(16 * 4 * 4, 10))
    x = torch.zeros(2, 3, 8, 8)
    conv1 = 2 * 2 * (8 * 8) * 8 * 3 * 9  # 2 * batch * output pixels * C_out * C_in * kernel
    conv2 = 2 * 2 * (4 * 4) * 16 * 8 * 9
    fc = 2 * 2 * 256 * 10
    forward = conv1 + conv2 + fc
    assert_within_1pct(count_flops(lambda: net(x)), forward)
    assert_within_1pct(train_step_flops(net, x, num_classes=10), 3 * forward - conv1)


@pytest.mark.parametrize("groups", [1, 4, 32])
@pytest.mark.parametrize("transposed", [False, True])
def test_grouped_conv_forward_and_backward(groups, transposed):
    if transposed:  # 8x8 -> 16x16: each input pixel meets the whole (C_out / groups) x 3 x 3 kernel
        conv = nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1, groups=groups, bias=False)
        forward = 2 * 2 * (8 * 8) * 64 * (32 // groups) * 9
    else:  # each output pixel: C_in / groups x 3 x 3 multiply-adds per output channel
        conv = nn.Conv2d(64, 32, 3, padding=1, groups=groups, bias=False)
        forward = 2 * 2 * (8 * 8) * 32 * (64 // groups) * 9
    measured_forward, step = forward_and_step(conv, torch.zeros(2, 64, 8, 8))
    assert_within_1pct(measured_forward, forward)
    assert_within_1pct(step, 3 * forward)


def test_stock_counter_overcounts_the_grouped_weight_gradient():
    # the gap this module closes: torch 2.14's weight-gradient term is `groups` times too large
    conv, x = nn.Conv2d(64, 64, 3, padding=1, groups=32, bias=False), torch.zeros(2, 64, 8, 8)
    with FlopCounterMode(display=False) as stock:
        conv(x).sum().backward()
    forward = 2 * 2 * 64 * 64 * 2 * 9
    assert stock.get_total_flops() == pytest.approx(forward + 32 * forward, rel=0.01)
    assert_within_1pct(count_flops(lambda: conv(x).sum().backward()), 2 * forward)


def test_depthwise_separable_block():
    c, c2, b, h = 32, 48, 2, 8
    block = nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c2, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
    )  # fmt: skip
    forward = 2 * b * h * h * c * 9 + 2 * b * h * h * c * c2
    measured_forward, step = forward_and_step(block, torch.zeros(b, c, h, h))
    assert_within_1pct(measured_forward, forward)
    assert_within_1pct(step, 3 * forward)


def attention_block_flops(b: int, t: int, c: int) -> int:
    """qkv projection, Q K^T and P V (all heads together: 2 * b * t * t * c each), output projection."""
    return 2 * b * t * c * 3 * c + 2 * (2 * b * t * t * c) + 2 * b * t * c * c


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", [None, SDPBackend.MATH])
def test_attention_block_on_every_cpu_kernel(causal, backend):
    attn, b, t, c = SelfAttention(32, heads=4, causal=causal), 2, 16, 32
    with sdpa_kernel(backend) if backend else nullcontext():  # None: the default (fused) kernel
        measured_forward, step = forward_and_step(attn, torch.zeros(b, t, c))
    assert_within_1pct(measured_forward, attention_block_flops(b, t, c))
    assert_within_1pct(step, 3 * attention_block_flops(b, t, c))


aten = torch.ops.aten
# Each CUDA (and XPU/out-of-tree) fused kernel: its forward, and its backward fed that forward's outputs.
# Run on meta tensors, which have these kernels' shapes without a GPU.
CUDA_KERNELS = {
    "flash": (
        lambda q, k, v: aten._scaled_dot_product_flash_attention(q, k, v),
        lambda q, k, v, o: aten._scaled_dot_product_flash_attention_backward(q, q, k, v, *o[:6], 0.0, False, *o[6:8]),
    ),
    "efficient": (
        lambda q, k, v: aten._scaled_dot_product_efficient_attention(q, k, v, None, True),
        lambda q, k, v, o: aten._scaled_dot_product_efficient_attention_backward(
            q, q, k, v, None, *o[:4], 0.0, [True, True, True, False]
        ),
    ),
    "cudnn": (
        lambda q, k, v: aten._scaled_dot_product_cudnn_attention(q, k, v, None, True),
        lambda q, k, v, o: aten._scaled_dot_product_cudnn_attention_backward(
            q, q, k, v, o[0], o[1], o[6], o[7], None, *o[2:6], 0.0, False
        ),
    ),
    "overrideable": (
        lambda q, k, v: aten._scaled_dot_product_fused_attention_overrideable(q, k, v),
        lambda q, k, v, o: aten._scaled_dot_product_fused_attention_overrideable_backward(
            q, q, k, v, q.new_empty(0), [True, True, True, False], *o[:6], 0.0, False, *o[6:8]
        ),
    ),
}


@pytest.mark.parametrize("kernel", sorted(CUDA_KERNELS))
def test_fused_attention_kernels_count_like_the_math_path(kernel):
    forward, backward = CUDA_KERNELS[kernel]
    b, h, t, d = 2, 4, 16, 8
    q, k, v = (torch.empty(b, h, t, d, device="meta") for _ in range(3))
    products = 2 * (2 * b * h * t * t * d)  # Q K^T and P V
    assert_within_1pct(count_flops(lambda: forward(q, k, v)), products)
    out = forward(q, k, v)
    assert_within_1pct(count_flops(lambda: backward(q, k, v, out)), 2 * products)  # no recomputed scores


@pytest.mark.parametrize("fused", [True, False])
def test_vit_training_step_with_and_without_fused_attention(fused):
    b, c, depth, patch, size, classes = 2, 32, 2, 4, 16, 10
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=size, patch_size=patch, embed_dim=c, depth=depth, num_heads=2, mlp_ratio=2, num_classes=classes
    )
    for block in vit.blocks:
        block.attn.fused_attn = fused
    n = (size // patch) ** 2
    t = n + 1  # the class token
    patch_embed = 2 * b * n * c * 3 * patch * patch
    mlp = 2 * (2 * b * t * c * 2 * c)
    forward = patch_embed + depth * (attention_block_flops(b, t, c) + mlp) + 2 * b * c * classes
    x = torch.zeros(b, 3, size, size)
    assert_within_1pct(count_flops(lambda: vit(x)), forward)
    assert_within_1pct(train_step_flops(vit, x, num_classes=classes), 3 * forward - patch_embed)


def test_efficientnet_inverted_residual_block():
    from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite

    b, c, h, mid, rd = 2, 16, 8, 64, 16
    block = InvertedResidual(c, c, exp_ratio=mid / c, se_layer=partial(SqueezeExcite, rd_ratio=rd / mid))
    assert block.se.conv_reduce.out_channels == rd  # the squeeze width the formula assumes
    forward = (
        2 * b * h * h * c * mid  # 1x1 expansion
        + 2 * b * h * h * mid * 9  # depthwise 3x3
        + 2 * b * mid * rd * 2  # squeeze-excite: two 1x1 convs on the pooled (b, mid, 1, 1)
        + 2 * b * h * h * mid * c  # 1x1 projection
    )
    measured_forward, step = forward_and_step(block, torch.zeros(b, c, h, h))
    assert_within_1pct(measured_forward, forward)
    assert_within_1pct(step, 3 * forward)


def test_efficientnet_step_is_three_forwards_less_the_stem():
    # a whole timm EfficientNet (stem, depthwise-separable and inverted-residual blocks with SE, head,
    # classifier) shrunk to two blocks: only the stem conv lacks an input gradient
    from timm.models._efficientnet_builder import decode_arch_def

    arch = decode_arch_def([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e6_c16_se0.25"]])
    model = timm.models.efficientnet.EfficientNet(arch, num_classes=10, stem_size=8, num_features=32)
    x = torch.zeros(2, 3, 16, 16)
    stem = 2 * 2 * 8 * 8 * 8 * 3 * 9  # 3x3 stride 2: 8x8 outputs, 8 channels
    assert_within_1pct(train_step_flops(model, x, 10), 3 * count_flops(lambda: model(x)) - stem)


@pytest.mark.parametrize("storage", ["stacked", "list"])
def test_moe_layer_counts_only_routed_tokens(storage):
    dim, hidden, experts, k, t = 16, 32, 8, 2, 20
    torch.manual_seed(0)
    moe = MoEFeedForward(dim, hidden, experts, k, storage=storage)
    mask = torch.arange(t).reshape(2, 10) < 7  # 14 real tokens, 6 padding
    router = 2 * t * dim * experts  # the gate scores every token, padding included
    for valid in (None, mask):
        routed = (t if valid is None else int(valid.sum())) * k  # (token, expert) pairs
        forward = router + routed * 2 * (2 * dim * hidden)  # not experts * t: each expert sees its tokens only
        x = torch.randn(2, 10, dim)
        measured_forward, step = forward_and_step(lambda x, valid=valid: moe(x, valid), x)
        assert_within_1pct(measured_forward, forward)
        assert_within_1pct(step, 3 * forward)


def test_grouped_mm_counts_rows_inside_the_offsets():
    a, b = torch.randn(20, 16, dtype=torch.bfloat16), torch.randn(4, 16, 8, dtype=torch.bfloat16)
    offs = torch.tensor([3, 8, 12, 15], dtype=torch.int32)  # rows 15..19 belong to no group
    assert count_flops(lambda: F.grouped_mm(a, b, offs=offs)) == 2 * 15 * 16 * 8


M, K, N, B = 3, 5, 4, 2
# op -> (call, closed-form count: 2 x multiply-adds)
SMALL_PRODUCTS = {
    "mv": (lambda: torch.mv(torch.ones(M, K), torch.ones(K)), 2 * M * K),
    "addmv_": (lambda: torch.zeros(M).addmv_(torch.ones(M, K), torch.ones(K)), 2 * M * K),
    "dot": (lambda: torch.dot(torch.ones(K), torch.ones(K)), 2 * K),
    "addr": (lambda: torch.addr(torch.zeros(M, N), torch.ones(M), torch.ones(N)), 2 * M * N),
    "addmm_": (lambda: torch.zeros(M, N).addmm_(torch.ones(M, K), torch.ones(K, N)), 2 * M * K * N),
    "addbmm": (lambda: torch.addbmm(torch.zeros(M, N), torch.ones(B, M, K), torch.ones(B, K, N)), 2 * B * M * K * N),
    "baddbmm_": (lambda: torch.zeros(B, M, N).baddbmm_(torch.ones(B, M, K), torch.ones(B, K, N)), 2 * B * M * K * N),
}


@pytest.mark.parametrize("op", sorted(SMALL_PRODUCTS))
def test_products_missing_from_torchs_table(op):
    call, expected = SMALL_PRODUCTS[op]
    assert count_flops(call) == expected


def test_an_op_without_formula_warns():
    @torch.library.custom_op("seeking_test::heavy_mm", mutates_args=())
    def heavy_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    with pytest.warns(RuntimeWarning, match="heavy_mm"):
        count_flops(lambda: heavy_mm(torch.ones(2, 2), torch.ones(2, 2)))
