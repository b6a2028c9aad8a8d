"""Hugging Face transformers MoE models made excitable in place, and tiny random-init configs of each family.

    from seeking.integrations.transformers import excitable
    excitable(model)                                   # a transformers >= 5 MoE model, edited in place
    optimizer = seeking.Excitation(torch.optim.AdamW(model.parameters()), model)

In transformers 5 every MoE family keeps its routed experts in one module decorated by
``transformers.integrations.moe.use_experts_implementation``: stacked parameters whose dim 0 is the
expert (``gate_up_proj``, ``down_proj``, GPT-OSS's biases too), called as
``experts(hidden_states (tokens, hidden), top_k_index (tokens, k), top_k_weights (tokens, k))``
whatever the experts implementation (eager, grouped_mm, batched_mm). :func:`excitable` gives each
such module an :class:`ExpertCounter` child that counts ``top_k_index`` at every call of it;
shared experts (Qwen2-MoE's ``shared_expert``, DeepSeek's ``shared_experts``) are not routed and
are not experts for Excitation.

Only valid tokens are counted. The MoE block never sees the attention mask, so a forward pre hook on
the model given to :func:`excitable` keeps the ``attention_mask`` (and the batch shape) of each call,
and the token rows ``B * S`` of the experts are matched to its last ``S`` columns (with a KV cache the
mask is ``(B, past + S)``). A mask that cannot be matched (not 2-D, another batch size) is warned about
once, and every row is counted. Indices ``>= num_experts`` (transformers' expert-parallel sentinel)
are not counted. A forward inside the model's call counts when the model is training and autograd
was on at the model's call (so a reentrant activation checkpoint, whose first forward runs without
autograd, counts once); a recomputation while autograd's backward runs (activation checkpointing) is
not counted again.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, SeekingWarning
from ..moe.layer import RoutedLayer
from . import require

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# transformers.utils.CONFIG_NAME, which every save_pretrained model folder holds (a literal: transformers is
# imported lazily); the same name as a seeking run's own configuration file, by coincidence
HF_CONFIG_FILE = "config.json"
MIN_MAJOR = 5  # transformers 5 stacked the experts of every MoE family (4.x: a ModuleList of MLPs)
COUNTER = "seeking_counter"  # the attribute name of the counting child on each experts module
# MoE models of transformers 5 that these configs and the tests cover; any other model whose experts
# module uses use_experts_implementation works the same way
SUPPORTED = "Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS, DeepSeek-V3"


def _transformers() -> Any:
    """transformers, or ``ConfigError`` when it is missing or older than :data:`MIN_MAJOR`."""
    transformers = require("transformers", "transformers")
    if int(transformers.__version__.split(".")[0]) < MIN_MAJOR:
        raise ConfigError(
            f"seeking's transformers integration needs transformers >= {MIN_MAJOR}.0 (stacked experts), "
            f"found {transformers.__version__}: pip install 'transformers>={MIN_MAJOR}'"
        )
    return transformers


@functools.cache
def _experts_forward_code() -> Any:
    """The code of the ``forward`` that ``use_experts_implementation`` puts on every class it decorates:
    one code object for all of them, so it identifies an experts module of any family."""
    moe = require("transformers.integrations.moe", "transformers")

    class Probe(nn.Module):
        def forward(self) -> None: ...

    return moe.use_experts_implementation(Probe).forward.__code__


def is_experts_module(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers experts module (a class decorated by ``use_experts_implementation``)."""
    forward = getattr(type(module), "forward", None)
    return getattr(forward, "__code__", None) is _experts_forward_code()


class _Call:
    """What the current call of the model given to :func:`excitable` says about its tokens; shared by
    the counters of one model."""

    def __init__(self, model: nn.Module) -> None:
        self.signature = inspect.signature(model.forward)
        # forward(..., **kwargs): the arguments it names only there are found there
        self.var_keyword = next((n for n, p in self.signature.parameters.items() if p.kind is p.VAR_KEYWORD), "")
        self.active = False  # inside a call of the model
        self.grad = False  # autograd was on at that call
        self.mask: Tensor | None = None
        self.shape: tuple[int, ...] | None = None  # (B, S) from input_ids or inputs_embeds
        self.warned = False

    def before(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            given = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:  # the model's own call raises the clear error
            given = {}
        given = {**given.get(self.var_keyword, {}), **given}
        self.active, self.grad = True, torch.is_grad_enabled()
        mask = given.get("attention_mask")
        self.mask = mask if isinstance(mask, Tensor) else None
        ids, embeds = given.get("input_ids"), given.get("inputs_embeds")
        if isinstance(ids, Tensor):
            self.shape = tuple(ids.shape)
        elif isinstance(embeds, Tensor):
            self.shape = tuple(embeds.shape[:-1])
        else:
            self.shape = None

    def after(self, model: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.active, self.mask, self.shape = False, None, None

    def tokens(self, rows: int) -> tuple[tuple[int, ...], Tensor | None]:
        """The token shape of ``rows`` flattened token rows ((B, S) when known, else (rows,)) and the
        valid tokens in that shape (None: all valid)."""
        shape, mask = self.shape, self.mask
        if shape is None and mask is not None and mask.dim() == 2 and mask.shape[0] and rows % mask.shape[0] == 0:
            shape = (mask.shape[0], rows // mask.shape[0])  # inputs given neither as ids nor as embeddings
        if shape is None or math.prod(shape) != rows:
            shape = (rows,)
        if mask is None:
            return shape, None
        # with a KV cache the mask (B, past + S) also covers the cached positions: these tokens are its last S
        if len(shape) == mask.dim() == 2 and shape[0] == mask.shape[0] and shape[1] <= mask.shape[1]:
            return shape, mask[:, mask.shape[1] - shape[1] :] != 0
        if not self.warned:
            self.warned = True
            warnings.warn(
                f"the attention_mask {tuple(mask.shape)} does not match the {rows} token rows the experts got: "
                "every row is counted, padding included. Pass a 2-D (batch, sequence) attention_mask to the model "
                "given to excitable(), whose experts get its batch * sequence tokens",
                SeekingWarning,
                stacklevel=2,
            )
        return shape, None


class ExpertCounter(RoutedLayer):
    """The :class:`~seeking.moe.ExpertLayer` of one transformers experts module (its child ``seeking_counter``).

    ``expert_parameters()`` yields the experts module's own parameters, each stacked (dim 0 = expert);
    ``record`` runs from a forward pre hook on the experts module (see the module docstring). Its buffers
    are not persistent (the model's state dict is unchanged) and stay float32 whatever dtype the model
    is cast to.
    """

    def __init__(self, experts: nn.Module, call: _Call) -> None:
        super().__init__(int(experts.num_experts))
        # the experts module is this module's parent: kept out of the module tree, and looked up at
        # every use, so that parameters replaced later (sharding) are the ones scaled
        object.__setattr__(self, "_experts", experts)
        self._call = call
        self._signature = inspect.signature(experts.forward)
        for name, p in experts.named_parameters(recurse=False):
            if p.dim() == 0 or p.shape[0] != self.num_experts:
                raise ConfigError(
                    f"{type(experts).__name__}.{name} has shape {tuple(p.shape)}, not stacked by expert "
                    f"(dim 0 = num_experts = {self.num_experts}): this experts module is not supported"
                )

    def expert_parameters(self) -> Iterator[tuple[nn.Parameter, int | None]]:
        for p in self._experts.parameters(recurse=False):
            yield p, None

    def counting(self) -> bool:
        if self._call.active:  # autograd as it was at the model's call (a reentrant checkpoint turns it off)
            return self.training and self._call.grad and torch._C._current_graph_task_id() == -1
        return super().counting()

    def observe(self, experts: nn.Module, args: tuple, kwargs: dict) -> None:
        """The forward pre hook on the experts module (a wrong call is refused before it runs): counts its
        ``top_k_index``."""
        given = self._signature.bind(*args, **kwargs).arguments
        names = list(self._signature.parameters)
        hidden, indices = given.get(names[0]), given.get(names[1])
        rows = hidden.shape[0] if isinstance(hidden, Tensor) and hidden.dim() == 2 else None
        if (
            rows is None
            or not isinstance(indices, Tensor)
            or indices.dim() != 2
            or indices.shape[0] != rows
            or indices.dtype.is_floating_point
            or indices.dtype == torch.bool
        ):
            what = f"{indices.dtype} {tuple(indices.shape)}" if isinstance(indices, Tensor) else repr(indices)
            raise ConfigError(
                f"{type(experts).__name__} was called with {names[1]}={what} for hidden states "
                f"{tuple(hidden.shape) if isinstance(hidden, Tensor) else hidden!r}: seeking counts experts called as "
                "experts(hidden_states (tokens, hidden), top_k_index (tokens, k) integer, top_k_weights)"
            )
        shape, valid = self._call.tokens(rows)
        indices = indices.masked_fill(indices >= self.num_experts, -1)  # expert-parallel sentinels
        self.record(indices.view(*shape, -1), None if valid is None else valid.to(indices.device))


def excitable(model: nn.Module) -> list[ExpertCounter]:
    """Make a transformers (>= 5) MoE model excitable in place; returns the counting layers, one per
    experts module, in module order (those of an earlier call when called again).

    Afterwards ``seeking.Excitation(optimizer, model)`` scales each routed expert's step, and
    :func:`seeking.moe.routing_metrics` reads the routing. The model's parameters, state dict and
    ``save_pretrained`` output are unchanged. Call it with the model that receives the
    ``attention_mask`` (e.g. the ``...ForCausalLM``), before wrapping it (DDP, FSDP, compile).

    Raises ``ConfigError`` for transformers older than 5 or a model without an experts module
    decorated by ``use_experts_implementation`` (the families of :data:`SUPPORTED` have one).
    """
    _transformers()
    experts = [m for m in model.modules() if is_experts_module(m)]
    if not experts:
        raise ConfigError(
            f"{type(model).__name__} has no routed experts module: seeking looks for a module whose class is "
            "decorated by transformers' use_experts_implementation (the stacked experts of transformers 5 MoE "
            f"models: {SUPPORTED})"
        )
    done = [getattr(m, COUNTER, None) for m in experts]
    if any(c is not None for c in done):
        if all(c is not None for c in done):
            return done
        raise ConfigError("excitable() ran on part of this model before: call it once, on the whole model")
    call = _Call(model)
    model.register_forward_pre_hook(call.before, with_kwargs=True)
    model.register_forward_hook(call.after, with_kwargs=True, always_call=True)
    counters = []
    for m in experts:
        counter = ExpertCounter(m, call)
        first = next(m.parameters(recurse=False), None)
        if first is not None:
            counter.to(first.device)
        counter.train(m.training)
        m.add_module(COUNTER, counter)
        m.register_forward_pre_hook(counter.observe, with_kwargs=True)
        counters.append(counter)
    return counters


def causal_lm(
    config_or_path: PretrainedConfig | str | os.PathLike,
    *,
    experts_implementation: str | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """A transformers causal language model: random-init from a config, or loaded from a local model folder
    (``save_pretrained`` output) offline, never downloaded. ``experts_implementation``: ``"eager"``,
    ``"grouped_mm"``, ``"batched_mm"``..., None for transformers' default; ``dtype``: of a folder's weights
    once loaded (None: transformers' default, the dtype they were saved in). Not yet excitable (:func:`excitable`).

    Raises ``ConfigError`` for a path that is not a folder with a ``config.json``."""
    transformers = _transformers()
    options = {} if experts_implementation is None else {"experts_implementation": experts_implementation}
    if isinstance(config_or_path, transformers.PretrainedConfig):
        return transformers.AutoModelForCausalLM.from_config(config_or_path, **options)
    path, config_name = Path(config_or_path), transformers.utils.CONFIG_NAME  # transformers names its files
    if not (path / config_name).is_file():
        raise ConfigError(
            f"{path} is not a local transformers model folder (no {config_name}): give a folder written by "
            "save_pretrained (models are never downloaded)"
        )
    if dtype is not None:
        options["dtype"] = dtype
    return transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **options)


def _tiny(family: str, vocab_size: int, max_positions: int, **fields: Any) -> PretrainedConfig:
    """The tiny config of ``family``: the shared fields that its configuration has, the family's own,
    then ``fields``."""
    transformers = _transformers()
    shared = {
        "vocab_size": vocab_size,
        "max_position_embeddings": max_positions,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "num_experts_per_tok": 2,
        "output_router_logits": False,  # no auxiliary loss: Excitation alone acts on the load
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "pad_token_id": None,  # a real token id in a small vocabulary: no embedding row is frozen
        "bos_token_id": None,
        "eos_token_id": None,
    }
    config_class, own = _FAMILIES[family]
    cls = getattr(transformers, config_class)
    has = {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "attribute_map", {}))
    return cls(**{**{k: v for k, v in shared.items() if k in has}, **own, **fields})


# family: (its config class in transformers, the fields of its tiny config beyond the shared ones)
_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    # dense causal LMs (Motivation's pairs grow them in depth: num_hidden_layers)
    "llama": ("LlamaConfig", {}),
    "gpt2": ("GPT2Config", {"n_inner": 64, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
    # MoE causal LMs
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "router_jitter_noise": 0.0}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {
            "num_experts": 4,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
            "decoder_sparse_step": 1,
        },
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        {"num_experts": 4, "moe_intermediate_size": 32, "head_dim": 8, "decoder_sparse_step": 1},
    ),
    "olmoe": ("OlmoeConfig", {"num_experts": 4}),
    "gpt_oss": (
        "GptOssConfig",
        # plain RoPE: the default YaRN scaling assumes a 4096-token original context
        {
            "num_local_experts": 4,
            "head_dim": 8,
            "sliding_window": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        {
            # 8 experts in 2 groups, top-1 group: its group-limited routing at work; layer 0 dense, layer 1 MoE
            "n_routed_experts": 8,
            "n_group": 2,
            "topk_group": 1,
            "n_shared_experts": 1,
            "moe_intermediate_size": 32,
            "first_k_dense_replace": 1,
            "kv_lora_rank": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 8,
            "num_key_value_heads": 4,
        },
    ),
}

TINY_CONFIGS: dict[str, Callable[..., PretrainedConfig]] = {
    family: functools.partial(_tiny, family) for family in _FAMILIES
}
DENSE_FAMILIES = ("llama", "gpt2")
# the MoE families, which excitable() and the tests of Excitation cover
HF_FAMILIES: dict[str, Callable[..., PretrainedConfig]] = {
    family: build for family, build in TINY_CONFIGS.items() if family not in DENSE_FAMILIES
}


def tiny_config(family: str, vocab_size: int, max_positions: int, **overrides: Any) -> PretrainedConfig:
    """A tiny random-init config of ``family`` (a name of :data:`TINY_CONFIGS`): hidden size 32, 2 layers,
    no dropout; the MoE families (:data:`HF_FAMILIES`) 4 experts (DeepSeek-V3: 8 in 2 groups, layer 0
    dense), top-2 routing, no router auxiliary loss; ``overrides`` are config fields (e.g.
    ``num_hidden_layers=4``). Nothing is downloaded. An unknown family or field: ``ConfigError``."""
    if family not in TINY_CONFIGS:
        raise ConfigError(f"unknown transformers family {family!r}: choose one of {', '.join(TINY_CONFIGS)}")
    base = TINY_CONFIGS[family](vocab_size, max_positions)
    # a config takes any keyword as an attribute: a misspelt field would be ignored without a word
    known = set(base.to_dict()) | set(getattr(base, "attribute_map", {}))
    unknown = sorted(set(overrides) - known)
    if unknown:
        close = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
        hints = ", ".join(
            f"{name!r}" + (f" (did you mean {close[name][0]!r}?)" if close[name] else "") for name in unknown
        )
        raise ConfigError(f"{type(base).__name__} has no field {hints}: give fields of the {family} configuration")
    return TINY_CONFIGS[family](vocab_size, max_positions, **overrides)


class HFTokenizer:
    """A transformers tokenizer as :class:`seeking.data.text.Tokenizer`: ``encode`` adds no special
    token (the text is one stream cut into blocks), ``vocab_size`` is ``len(tokenizer)`` (added tokens
    included). ``path``: the folder it was loaded from, recorded in saved model files."""

    unit = "token"

    def __init__(self, tokenizer: Any, path: str) -> None:
        self.tokenizer, self.path = tokenizer, path

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> Tensor:
        # verbose=False: the whole file is one sequence, longer than any model's context, on purpose
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        unknown = self.tokenizer.unk_token_id
        if unknown is not None and unknown in ids:  # the text lost characters the tokenizer cannot represent
            count = ids.count(unknown)
            warnings.warn(
                f"the tokenizer in {self.path!r} maps {count} of the text's {len(ids)} tokens to its unknown token "
                f"{self.tokenizer.unk_token!r}: that part of the text is lost; use a tokenizer that covers it "
                "(a byte-level one covers any text)",
                SeekingWarning,
                stacklevel=2,
            )
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: Tensor) -> str:
        return self.tokenizer.decode(ids.tolist())

    def metadata(self) -> dict[str, Any]:
        return {"tokenizer": self.path, "tokenizer_class": type(self.tokenizer).__name__}


# the files one of which every saved transformers tokenizer has (fast, sentencepiece, BPE, WordPiece)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether the local folder ``path`` holds a saved tokenizer (e.g. a model folder saved with its own)."""
    folder = Path(path).expanduser()
    return folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES)


def local_tokenizer(path: str | os.PathLike) -> HFTokenizer:
    """The tokenizer saved in the local folder ``path`` (``save_pretrained`` output, e.g. a model's own
    folder), loaded offline, never downloaded. ``ConfigError`` for a path that holds no tokenizer."""
    transformers = _transformers()
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"--tokenizer {str(path)!r} is not a folder: give a local tokenizer folder written by save_pretrained "
            "(tokenizers are never downloaded)"
        )
    if not has_tokenizer(folder):
        raise ConfigError(
            f"{str(folder)!r} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}): give the folder a "
            "tokenizer's save_pretrained wrote"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a folder transformers cannot read as a tokenizer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load a tokenizer from {str(folder)!r}: {first}") from None
    return HFTokenizer(tokenizer, str(folder))
