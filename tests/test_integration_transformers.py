"""seeking.integrations.transformers: transformers 5 MoE models made excitable in place, on tiny random-init configs."""

import copy
import sys
import warnings

import pytest
import torch
import transformers

import seeking
from seeking.errors import ConfigError, SeekingWarning
from seeking.integrations.transformers import HF_FAMILIES, causal_lm, excitable, is_experts_module, tiny_config
from seeking.moe import expert_layers, routing_metrics

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models
FAMILIES = sorted(HF_FAMILIES)
IMPLEMENTATIONS = ["eager", "grouped_mm", "batched_mm"]
VOCAB, LENGTHS = 50, (8, 5, 3)  # right padding: sequence b has LENGTHS[b] real tokens


def build(family, implementation="eager", seed=0, **overrides):
    torch.manual_seed(seed)
    return causal_lm(tiny_config(family, VOCAB, 64, **overrides), experts_implementation=implementation).train()


def batch(seed=0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(lengths), max(lengths)), generator=g)
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def routers(model):
    """Each experts module's router (its sibling ``gate``, or GPT-OSS's ``router``), in module order."""
    out = []
    for name, module in model.named_modules():
        if is_experts_module(module):
            block = model.get_submodule(name.rpartition(".")[0])
            out.append(getattr(block, "gate", None) or block.router)
    return out


def record_routing(model):
    """Each router's ``top_k_index`` of every call, read independently of the counters (a forward hook)."""
    calls = [[] for _ in routers(model)]
    for i, router in enumerate(routers(model)):
        router.register_forward_hook(
            lambda m, a, out, i=i: calls[i].append(out[2].detach().reshape(-1, out[2].shape[-1]))
        )
    return calls


def valid_counts(indices, mask, num_experts):
    """Tokens sent to each expert by the valid rows (``mask`` flattened the way the MoE blocks flatten tokens)."""
    return torch.bincount(indices[mask.reshape(-1).bool()].flatten(), minlength=num_experts).float()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_counts_are_the_valid_tokens_routing(family, implementation):
    model = build(family, implementation)
    counters = excitable(model)
    calls = record_routing(model)
    assert expert_layers(model) == counters and len(counters) == (1 if family == "deepseek_v3" else 2)
    data = batch()
    model(**data).loss.backward()
    for counter, routed in zip(counters, calls, strict=True):
        (indices,) = routed
        expected = valid_counts(indices, data["attention_mask"], counter.num_experts)
        assert torch.equal(counter.expert_counts, expected) and torch.equal(counter.last_counts, expected)
        assert counter.expert_counts.sum() == 2 * sum(LENGTHS)  # top-2
        # padding rows were routed too, and would have been counted without the mask
        assert not torch.equal(expected, torch.bincount(indices.flatten(), minlength=counter.num_experts).float())
        assert counter.last_indices.shape == (len(LENGTHS), max(LENGTHS), 2)
    metrics = routing_metrics(model, data["labels"])  # labels (B, S): the counters keep the token shape
    assert metrics["layer0/dead_fraction"] == float((counters[0].last_counts == 0).float().mean())
    assert 0 <= metrics["specialization"] <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_configs_and_no_mask(family):
    model = build(family, num_hidden_layers=3)  # overrides are config fields
    counters = excitable(model)
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 32
    assert len(counters) == (2 if family == "deepseek_v3" else 3)  # DeepSeek-V3: the first layer is dense
    assert {c.num_experts for c in counters} == {8 if family == "deepseek_v3" else 4}
    out = model(input_ids=batch()["input_ids"], labels=batch()["input_ids"])  # no mask: every token is valid
    assert getattr(out, "aux_loss", None) is None  # no router auxiliary loss
    out.loss.backward()
    assert all(c.expert_counts.sum() == 2 * len(LENGTHS) * max(LENGTHS) for c in counters)  # top-2


def test_left_padding_and_a_kv_cache_count_the_valid_tokens_only():
    model = build("olmoe").eval()
    (counter,) = excitable(model)[1:]
    (_, calls) = record_routing(model)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids = torch.randint(0, VOCAB, (2, 5))
    with torch.no_grad():
        past = model(ids, mask, use_cache=True).past_key_values  # the mask given positionally
        assert torch.equal(counter.last_counts, valid_counts(calls[0], mask, 4))
        # one new token each, with the cache: the mask is (B, past + 1), the experts get B rows
        step_mask = torch.cat([mask, torch.tensor([[0], [1]])], dim=1)
        model(input_ids=ids[:, :1], attention_mask=step_mask, cache=past)
    assert torch.equal(counter.last_counts, valid_counts(calls[1], step_mask[:, -1:], 4))
    assert counter.last_counts.sum() == 2 and torch.equal(counter.expert_counts, torch.zeros(4))  # eval: not counted


@pytest.fixture
def deterministic():
    """batched_mm's backward (an indexed gather) differs run to run on CPU unless torch is deterministic."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_global_is_bit_identical_to_the_plain_optimizer(family, implementation, deterministic):
    plain = build(family, implementation)
    model = copy.deepcopy(plain)
    excitable(model)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1)
    opt = seeking.Excitation(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), model, "global")
    for step in range(3):
        for m, o in ((plain, plain_opt), (model, opt)):
            o.zero_grad()
            m(**batch(step)).loss.backward()
            o.step()
    for (name, p), q in zip(plain.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q), name
    untrained = build(family).parameters()
    assert any(not torch.equal(p, q) for p, q in zip(plain.parameters(), untrained, strict=True))  # it trained


def force_routing(model, mask, valid, padding):
    """Route the valid tokens of ``mask`` to the experts ``valid``, the padding ones to ``padding`` (router hooks)."""
    indices = torch.where(mask.reshape(-1).bool()[:, None], torch.tensor(valid), torch.tensor(padding))
    for router in routers(model):
        router.register_forward_hook(lambda module, args, out: (out[0], out[1], indices))


@pytest.mark.parametrize("attach", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_sum_keeps_an_expert_without_valid_tokens(family, attach):
    """Expert 0 gets only padding tokens: under Zero-Sum it does not move, while AdamW's weight decay moves it."""
    model = build(family)
    plain = copy.deepcopy(model)
    counters = excitable(model)
    before = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    if attach:
        seeking.Excitation.attach(opt, model, "zero_sum")
    else:
        opt = seeking.Excitation(opt, model, "zero_sum")
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1)
    for m, o in ((model, opt), (plain, plain_opt)):
        force_routing(m, batch()["attention_mask"], valid=[1, 2], padding=[0, 3])
        for step in range(2):
            o.zero_grad()
            m(**batch(step)).loss.backward()
            o.step()
    assert len(counters) >= 1
    for counter in counters:
        experts = counter._experts
        name = next(n for n, m in model.named_modules() if m is experts)
        for pname, p in experts.named_parameters(recurse=False):
            old, moved = before.get_submodule(name).get_parameter(pname), plain.get_submodule(name).get_parameter(pname)
            assert torch.equal(p[0], old[0]) and torch.equal(p[3], old[3]), pname  # only padding, or nothing
            assert not old[0].any() or not torch.equal(moved[0], old[0]), pname  # weight decay moves them (not 0)
            assert not torch.equal(p[1], old[1]), pname


def test_gradient_accumulation_sums_the_micro_batches():
    model = build("qwen2_moe")
    counters = excitable(model)
    calls = record_routing(model)
    expected = [torch.zeros(4) for _ in counters]
    for seed, lengths, implementation in ((0, LENGTHS, "eager"), (1, (2, 6), "grouped_mm")):
        model.set_experts_implementation(implementation)  # switched after excitable: counted the same
        data = batch(seed, lengths)
        model(**data).loss.backward()
        for e, routed in zip(expected, calls, strict=True):
            e += valid_counts(routed[-1], data["attention_mask"], 4)
    for counter, e in zip(counters, expected, strict=True):
        assert torch.equal(counter.expert_counts, e) and e.sum() == 2 * (sum(LENGTHS) + 8)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_counts_once(reentrant):
    model = build("mixtral")
    counters = excitable(model)
    calls = record_routing(model)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    data = batch()
    model(**data).loss.backward()
    for counter, routed in zip(counters, calls, strict=True):
        assert len(routed) == 2  # the forward, and its recomputation in backward
        assert torch.equal(routed[0], routed[1])
        assert torch.equal(counter.expert_counts, valid_counts(routed[0], data["attention_mask"], 4))
    assert all(p.grad is not None for counter in counters for p, _ in counter.expert_parameters())


def test_state_dict_and_save_pretrained_are_unchanged(tmp_path):
    model = build("gpt_oss")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "before")
    counters = excitable(model)
    assert excitable(model) == counters  # a second call adds nothing
    model(**batch()).loss.backward()
    assert counters[0].expert_counts.sum() == 2 * sum(LENGTHS)  # counted once, not twice
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model.save_pretrained(tmp_path / "after")
    assert (tmp_path / "before/model.safetensors").read_bytes() == (tmp_path / "after/model.safetensors").read_bytes()
    loaded = causal_lm(tmp_path / "after", experts_implementation="grouped_mm")  # offline, from the folder
    assert loaded.config._experts_implementation == "grouped_mm"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ConfigError, match="not a local transformers model folder"):
        causal_lm(tmp_path / "missing")
    # GPT-OSS's expert biases are experts' too
    experts = counters[0]._experts
    stacked = [experts.gate_up_proj, experts.gate_up_proj_bias, experts.down_proj, experts.down_proj_bias]
    assert [p for p, k in counters[0].expert_parameters()] == stacked


def test_counts_stay_float32_when_the_model_is_cast():
    model = build("olmoe")
    counters = excitable(model)
    model.to(torch.bfloat16)
    model(**batch()).loss.backward()
    assert all(c.expert_counts.dtype == torch.float32 and c.expert_counts.sum() == 2 * sum(LENGTHS) for c in counters)
    assert counters[0].expert_parameters().__next__()[0].dtype == torch.bfloat16


def test_counters_follow_the_model_device_and_copies():
    with torch.device("meta"):
        model = build("olmoe")
    counters = excitable(model)
    assert all(c.expert_counts.is_meta for c in counters)
    model.to_empty(device="cpu")  # materialised: the counts start at zero
    assert all(torch.equal(c.expert_counts, torch.zeros(4)) for c in counters)
    model = build("olmoe")
    counters = excitable(model)
    twin = copy.deepcopy(model)
    twin(**batch()).loss.backward()
    assert all(c.expert_counts.sum() == 0 for c in counters)  # the copy counts into its own counters
    assert all(c.expert_counts.sum() == 2 * sum(LENGTHS) for c in expert_layers(twin))
    assert excitable(twin) == expert_layers(twin)


def test_expert_parallel_sentinels_and_wrong_indices():
    model = build("mixtral")
    counter = excitable(model)[0]
    experts = counter._experts
    hidden, weights = torch.randn(3, 32), torch.full((3, 2), 0.5)
    experts(hidden, torch.tensor([[0, 4], [4, 4], [1, 0]]), weights)  # 4 = num_experts: another rank's expert
    assert counter.expert_counts.tolist() == [2, 1, 0, 0]
    for indices in (torch.zeros(3, 2), torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long)):
        with pytest.raises(ConfigError, match="top_k_index"):
            experts(hidden, indices, weights)


@pytest.mark.parametrize(
    "given",
    [
        {"attention_mask": torch.ones(2, 1, 3, 3)},  # a 4-D mask
        {"input_ids": torch.zeros(1, 6, dtype=torch.long), "attention_mask": torch.ones(2, 3)},  # other batch
        {"input_ids": torch.zeros(2, 2, dtype=torch.long), "attention_mask": torch.ones(2, 2)},  # not B * S rows
    ],
)
def test_a_mask_that_cannot_be_matched_is_warned_once(given):
    model = build("mixtral")
    counter = excitable(model)[0]
    counter._call.before(model, (), given)  # as a call of the model would
    hidden, indices, weights = torch.randn(6, 32), torch.zeros(6, 2, dtype=torch.long), torch.full((6, 2), 0.5)
    with pytest.warns(SeekingWarning, match="every row is counted"):
        counter._experts(hidden, indices, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counter._experts(hidden, indices, weights)
    assert counter.expert_counts[0] == 24


def make_experts(extra_parameter=False):
    """A user's own experts class decorated by ``use_experts_implementation`` (3 experts, hidden 4)."""

    @transformers.integrations.moe.use_experts_implementation
    class Experts(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.num_experts = 3
            self.gate_up_proj = torch.nn.Parameter(torch.randn(3, 8, 4))
            self.down_proj = torch.nn.Parameter(torch.randn(3, 4, 4))
            self.act_fn = torch.nn.functional.silu
            if extra_parameter:
                self.scale = torch.nn.Parameter(torch.ones(4))  # shared by all experts

        def forward(self, hidden_states, top_k_index, top_k_weights): ...  # batched_mm runs instead

    return Experts(transformers.PretrainedConfig(experts_implementation="batched_mm"))


class OwnModel(torch.nn.Module):
    def __init__(self, extra_parameter=False):
        super().__init__()
        self.embed, self.router = torch.nn.Embedding(VOCAB, 4), torch.nn.Linear(4, 3)
        self.experts = make_experts(extra_parameter)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids).view(-1, 4)
        weights, indices = self.router(h).softmax(-1).topk(2)
        self.indices = indices
        return self.experts(h, indices, weights).view(*input_ids.shape, 4)


def test_any_experts_module_of_use_experts_implementation():
    model = OwnModel()
    (counter,) = excitable(model)
    data = batch()
    model(data["input_ids"], data["attention_mask"]).sum().backward()
    assert torch.equal(counter.expert_counts, valid_counts(model.indices, data["attention_mask"], 3))
    assert [p for p, _ in counter.expert_parameters()] == [model.experts.gate_up_proj, model.experts.down_proj]
    with pytest.raises(ConfigError, match=r"scale has shape \(4,\), not stacked by expert"):
        excitable(OwnModel(extra_parameter=True))


def test_refusals(monkeypatch):
    with pytest.raises(ConfigError, match="mixtral, qwen2_moe"):
        tiny_config("switch", VOCAB, 64)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ConfigError, match="use_experts_implementation"):
        excitable(llama)
    with pytest.raises(ConfigError, match="no MoE layer"):
        seeking.Excitation(torch.optim.SGD(llama.parameters()), llama)
    model = build("mixtral")
    # building a model can swap the module object in sys.modules: patch the one an import finds now
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.57.1")
    with pytest.raises(ConfigError, match=r"transformers >= 5\.0.*4\.57\.1"):
        excitable(model)
