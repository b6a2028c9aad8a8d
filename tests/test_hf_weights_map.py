"""The weights map on Hugging Face families (tiny random-init models built from configs; nothing downloaded):
added blocks start as the identity by HF names, non-persistent buffers stay each model's own, fused
projections map part onto part or are refused, and configs that disagree are refused."""

import re
import warnings

import pytest
import torch
import transformers as T
from torch import nn

from seeking import ConfigError, Motivator, Never, WeightMap
from seeking.errors import SeekingWarning
from seeking.integrations.transformers import HF_FAMILIES, causal_lm, tiny_config
from seeking.motivation import IDENTITY_RULES, register_identity_rule

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models
VOCAB = 64
TOKENS = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
PIXELS = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
DECODER = {"vocab_size": VOCAB, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
DECODER |= {"intermediate_size": 64, "max_position_embeddings": 32, "tie_word_embeddings": False}
VIT = {"image_size": 8, "patch_size": 4, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}


def dense(config_class, model_class):
    return lambda layers, **kw: model_class(config_class(**{**DECODER, "num_hidden_layers": layers, **kw}))


def moe(family):
    return lambda layers, **kw: causal_lm(tiny_config(family, VOCAB, 32, num_hidden_layers=layers, **kw))


# family: (build(layers, **config fields), probe input)
FAMILIES = {
    "llama": (dense(T.LlamaConfig, T.LlamaForCausalLM), TOKENS),
    "qwen2": (dense(T.Qwen2Config, T.Qwen2ForCausalLM), TOKENS),
    "mistral": (dense(T.MistralConfig, T.MistralForCausalLM), TOKENS),
    **{family: (moe(family), TOKENS) for family in HF_FAMILIES},
    "gpt2": (
        lambda layers, **kw: T.GPT2LMHeadModel(
            T.GPT2Config(**{"vocab_size": VOCAB, "n_positions": 32, "n_embd": 32, "n_head": 4, "n_layer": layers, **kw})
        ),
        TOKENS,
    ),
    "vit": (
        lambda layers, **kw: T.ViTForImageClassification(
            T.ViTConfig(**{**VIT, "num_hidden_layers": layers, "num_labels": 3, **kw})
        ),
        PIXELS,
    ),
}


def pair(family, base_fields=None, motivated_fields=None, layers=(2, 4)):
    build, probe = FAMILIES[family]
    torch.manual_seed(0)
    base = build(layers[0], **(base_fields or {}))
    torch.manual_seed(1)
    return base, build(layers[1], **(motivated_fields or {})), probe


def logits(model, probe):
    with torch.no_grad():
        return model.eval()(probe, use_cache=False).logits if probe is TOKENS else model.eval()(probe).logits


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_added_blocks_of_pre_norm_families_start_as_the_identity(family):
    base, large, probe = pair(family)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeekingWarning)  # an exact start is not warned about
        motivator = Motivator(base, large, Never(), sgd(base), sgd(large), example_input=probe)
    layers = "transformer.h" if family == "gpt2" else "vit.layers" if family == "vit" else "model.layers"
    assert motivator.added_blocks == [f"{layers}.2", f"{layers}.3"]
    assert motivator.start_difference == 0.0
    assert (logits(base, probe) - logits(large, probe)).abs().max().item() == 0.0
    # the control: the same pair without the identity initialisation computes another function
    torch.manual_seed(1)
    control = FAMILIES[family][0](4)
    WeightMap.infer(base, control).copy(base, control, "to_motivated", buffers=True)
    assert (logits(base, probe) - logits(control, probe)).abs().max().item() > 1e-4


def test_moe_added_blocks_zero_stacked_experts_biases_and_shared_experts():
    for family, zeroed in (
        ("gpt_oss", ["mlp.experts.down_proj", "mlp.experts.down_proj_bias", "self_attn.o_proj.bias"]),
        ("qwen2_moe", ["mlp.experts.down_proj", "mlp.shared_expert.down_proj.weight"]),
        ("deepseek_v3", ["mlp.experts.down_proj", "mlp.shared_experts.down_proj.weight"]),
    ):
        base, large, _ = pair(family)
        WeightMap.infer(base, large).init_extra_capacity(large)
        tensors = dict(large.named_parameters())
        for name in ["self_attn.o_proj.weight", *zeroed]:
            assert not tensors[f"model.layers.3.{name}"].any(), (family, name)
        assert tensors["model.layers.3.mlp.experts.gate_up_proj"].any()  # only the branch ends are zeroed


def test_post_norm_blocks_cannot_start_exact_and_the_warning_says_so():
    def bert(layers):
        config = T.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32, num_labels=3,
        )  # fmt: skip
        return T.BertForSequenceClassification(config)

    torch.manual_seed(0)
    base, large = bert(2), bert(4)
    with pytest.warns(SeekingWarning, match="post-norm") as record:
        motivator = Motivator(base, large, Never(), sgd(base), sgd(large), example_input=TOKENS)
    message = str(record[0].message)
    assert "'bert.encoder.layer.2', 'bert.encoder.layer.3' cannot start as the identity" in message
    assert motivator.added_blocks == [] and set(motivator.map.not_identity) == {
        "bert.encoder.layer.2",
        "bert.encoder.layer.3",
    }
    assert motivator.start_difference > 1e-4  # above the tolerance: a real difference


def test_rotary_frequencies_stay_the_motivated_models_own_when_the_head_grows():
    # head size 8 -> 16: the large model's rotary frequencies are its own, not the base's leading ones
    base, large, probe = pair("llama", motivated_fields={"hidden_size": 64}, layers=(2, 2))
    own = {n: b.clone() for n, b in large.named_buffers()}
    assert own["model.rotary_emb.inv_freq"].shape == (8,)
    with pytest.warns(SeekingWarning, match="width growth"):
        motivator = Motivator(base, large, Never(), sgd(base), sgd(large), example_input=probe)
    for name, buffer in large.named_buffers():
        assert torch.equal(buffer, own[name]), name
    assert not any("rotary" in e.base for e in motivator.map.entries)
    assert not any("rotary" in n for n in motivator.map.extra)  # derived, not capacity
    # queries are mapped per head: base head h lands in the first 8 features of large head h
    bq, mq = base.model.layers[0].self_attn.q_proj.weight, large.model.layers[0].self_attn.q_proj.weight
    for h in range(4):
        assert torch.equal(mq[16 * h : 16 * h + 8, :32], bq[8 * h : 8 * (h + 1)])


def test_grouped_query_heads_keep_their_key_value_head():
    # 4 -> 8 query heads of 8 features, 2 key/value heads: 2 -> 4 query heads per key/value head
    base, large, _ = pair("llama", motivated_fields={"hidden_size": 64, "num_attention_heads": 8}, layers=(2, 2))
    WeightMap.infer(base, large).copy(base, large, "to_motivated", buffers=True)
    attention = base.model.layers[0].self_attn, large.model.layers[0].self_attn
    for h in range(4):  # base query head h reads key/value head h // 2: it lands in large head 4 (h // 2) + h % 2
        m = 4 * (h // 2) + h % 2
        assert torch.equal(attention[1].q_proj.weight[8 * m : 8 * m + 8, :32], attention[0].q_proj.weight[8 * h :][:8])
        assert torch.equal(
            attention[1].o_proj.weight[:32, 8 * m : 8 * m + 8], attention[0].o_proj.weight[:, 8 * h :][:, :8]
        )
    assert torch.equal(attention[1].k_proj.weight[:16, :32], attention[0].k_proj.weight)  # same 2 heads of 8


@pytest.mark.parametrize("heads", [4, 8])
def test_gpt2_fused_c_attn_maps_queries_keys_and_values_onto_their_own(heads):
    base, large, probe = pair("gpt2", motivated_fields={"n_embd": 64, "n_head": heads}, layers=(2, 2))
    with pytest.warns(SeekingWarning, match="width growth"):
        Motivator(base, large, Never(), sgd(base), sgd(large), example_input=probe)
    head_dim = 64 // heads
    for block in range(2):
        bw, mw = base.transformer.h[block].attn.c_attn.weight, large.transformer.h[block].attn.c_attn.weight
        bo, mo = base.transformer.h[block].attn.c_proj.weight, large.transformer.h[block].attn.c_proj.weight
        for part in range(3):  # 0 queries, 1 keys, 2 values: Conv1D weights are (in, out)
            for h in range(4):
                m_cols = slice(64 * part + head_dim * h, 64 * part + head_dim * h + 8)
                assert torch.equal(mw[:32, m_cols], bw[:, 32 * part + 8 * h : 32 * part + 8 * (h + 1)])
                assert torch.equal(mo[head_dim * h : head_dim * h + 8, :32], bo[8 * h : 8 * (h + 1)])


def test_a_fused_projection_no_layout_splits_is_refused_naming_it():
    class Attention(nn.Module):  # GPT-NeoX-like names, no head count to split by
        def __init__(self, width):
            super().__init__()
            self.query_key_value = nn.Linear(width, 3 * width)
            self.dense = nn.Linear(width, width)

        def forward(self, x):
            q, k, v = self.query_key_value(x).chunk(3, dim=-1)
            return self.dense(q * k + v)

    with pytest.raises(ConfigError, match=r"'query_key_value\.weight'.*side by side"):
        WeightMap.infer(Attention(8), Attention(16))


def test_a_nanogpt_like_linear_c_attn_is_split_on_dim_0():
    class Attention(nn.Module):  # nanoGPT's names: nn.Linear c_attn (3 * width, width), n_head
        def __init__(self, width, n_head):
            super().__init__()
            self.n_head, self.c_attn, self.c_proj = n_head, nn.Linear(width, 3 * width), nn.Linear(width, width)

    base, large = Attention(8, 2), Attention(16, 2)
    WeightMap.infer(base, large).copy(base, large, "to_motivated", buffers=True)
    for part in range(3):
        for h in range(2):  # head h of part p: rows 16 p + 8 h (large), 8 p + 4 h (base)
            rows = slice(16 * part + 8 * h, 16 * part + 8 * h + 4)
            assert torch.equal(large.c_attn.weight[rows, :8], base.c_attn.weight[8 * part + 4 * h :][:4])
            assert torch.equal(large.c_attn.bias[rows], base.c_attn.bias[8 * part + 4 * h :][:4])
    assert torch.equal(large.c_proj.weight[:8, 8:12], base.c_proj.weight[:, 4:8])  # base head 1's inputs


def test_deepseek_latent_attention_growth_is_refused_where_it_would_mix_parts():
    # kv_a_proj_with_mqa holds [latent (kv_lora_rank) | rotary key] rows: a larger latent would mix them
    with pytest.raises(ConfigError, match=r"'model\.layers\.0\.self_attn\.kv_a_proj_with_mqa\.weight'"):
        WeightMap.infer(*pair("deepseek_v3", motivated_fields={"kv_lora_rank": 32}, layers=(2, 2))[:2])
    # a wider hidden size leaves the fused rows as they are: mapped
    wmap = WeightMap.infer(*pair("deepseek_v3", motivated_fields={"hidden_size": 64}, layers=(2, 2))[:2])
    entry = next(e for e in wmap.entries if e.base.endswith("0.self_attn.kv_a_proj_with_mqa.weight"))
    assert entry.index == (slice(0, 24), slice(0, 32))


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_stacked_expert_gate_and_up_projections_map_onto_their_own(family):
    base, large, _ = pair(family, motivated_fields={"intermediate_size": 128}, layers=(2, 2))
    WeightMap.infer(base, large).copy(base, large, "to_motivated", buffers=True)
    bg, mg = base.model.layers[0].mlp.experts.gate_up_proj, large.model.layers[0].mlp.experts.gate_up_proj
    if family == "mixtral":  # (experts, 2 * inner, hidden), gate then up
        assert torch.equal(mg[:, :64], bg[:, :64]) and torch.equal(mg[:, 128:192], bg[:, 64:])
    else:  # GPT-OSS: (experts, hidden, 2 * inner), gate and up interleaved
        assert torch.equal(mg[:, :, :128], bg)
        b_bias = base.model.layers[0].mlp.experts.gate_up_proj_bias
        assert torch.equal(large.model.layers[0].mlp.experts.gate_up_proj_bias[:, :128], b_bias)


@pytest.mark.parametrize(
    ("family", "field", "values"),
    [
        ("llama", "vocab_size", (64, 80)),
        ("vit", "num_labels", (3, 5)),
        ("gpt2", "activation_function", ("gelu_new", "relu")),
    ],
)
def test_configs_that_disagree_on_what_the_model_computes_are_refused(family, field, values):
    base, large, _ = pair(family, {field: values[0]}, {field: values[1]})
    message = f"disagree on {field}: base {values[0]!r}, motivated {values[1]!r}"
    for wrap in (lambda m: m, lambda m: nn.ModuleDict({"hf": m})):  # the model itself, or one it wraps
        with pytest.raises(ConfigError, match=re.escape(message)):
            WeightMap.infer(wrap(base), wrap(large))


def test_the_first_call_with_keyword_arguments_checks_the_start():
    base, large, probe = pair("llama")
    motivator = Motivator(base, large, Never(), sgd(base), sgd(large))
    assert motivator.start_difference is None
    loss = large.train()(input_ids=probe, labels=probe).loss  # transformers' usual call: keywords only
    assert motivator.start_difference == 0.0 and torch.isfinite(loss)
    assert large.config.use_cache  # the check ran without the cache and gave the config back as it was


def test_a_users_identity_rule_makes_its_blocks_exact():
    class Block(nn.Module):  # a residual block no built-in rule knows
        def __init__(self):
            super().__init__()
            self.inner, self.out = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return x + self.out(torch.tanh(self.inner(x)))

    def net(blocks):
        torch.manual_seed(blocks)
        return nn.Sequential(nn.Linear(4, 8), *(Block() for _ in range(blocks)), nn.Linear(8, 3))

    x = torch.randn(5, 4)
    base, large = net(1), net(2)
    with pytest.warns(SeekingWarning, match="register_identity_rule"):
        Motivator(base, large, Never(), sgd(base), sgd(large), example_input=x)

    @register_identity_rule("test_block")
    def block_rule(block):
        if not isinstance(block, Block):
            return False
        nn.init.zeros_(block.out.weight)
        nn.init.zeros_(block.out.bias)
        return True

    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_identity_rule("test_block")(block_rule)
        base, large = net(1), net(2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SeekingWarning)
            motivator = Motivator(base, large, Never(), sgd(base), sgd(large), example_input=x)
        assert motivator.added_blocks == ["2"] and motivator.start_difference == 0.0
    finally:
        IDENTITY_RULES.pop("test_block")


def test_a_pair_of_two_dtypes_is_refused():
    base, large, _ = pair("llama")
    with pytest.raises(ConfigError, match=r"different dtypes \(base torch.float32, motivated torch.bfloat16\)"):
        WeightMap.infer(base, large.to(torch.bfloat16))


def test_fewer_query_heads_per_key_value_head_is_refused_with_both_head_views():
    # 4 query heads on 2 key/value heads (2 per group) -> 4 on 4 (1 per group): same shapes, heads that do not nest
    base, large, _ = pair("llama", motivated_fields={"num_key_value_heads": 4}, layers=(2, 2))
    with pytest.raises(ConfigError, match=re.escape("they are (2, 2, 8, 32) and (4, 1, 8, 32), which do not nest")):
        WeightMap.infer(base, large)


def test_norms_of_another_epsilon_are_refused():
    base, large, _ = pair("llama", {"rms_norm_eps": 1e-6}, {"rms_norm_eps": 1e-2})
    with pytest.raises(ConfigError, match=re.escape("disagree on rms_norm_eps: base 1e-06, motivated 0.01")):
        WeightMap.infer(base, large)
