"""Hugging Face transformers causal language models as ``seeking`` models (``pip install 'seeking[transformers]'``).

``hf_<family>_tiny`` builds a random-init model of each family of
:data:`seeking.integrations.transformers.TINY_CONFIGS` from its tiny configuration (2 layers), sized
for the data's character vocabulary, and ``hf_<family>_tiny_4l`` the same with 4 layers: the deeper
model of a Motivation pair (``seeking compare --pair hf_llama_tiny:hf_llama_tiny_4l``). The families
are dense (Llama, GPT-2) or MoE (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS, DeepSeek-V3); nothing is
ever downloaded. A local model folder (``save_pretrained``'s output) is a model name too:
``create_model("path/to/folder", vocab_size=..., block_size=...)`` loads it offline with its weights
(:meth:`HFCausalLM.from_folder`), and ``hf_causal_lm`` rebuilds it from its configuration alone (what
a saved model file records). An MoE model is made excitable in place
(:func:`seeking.integrations.transformers.excitable`), so :class:`seeking.Excitation` and the
routing metrics see its MoE layers.

``forward(idx, mask=None)`` maps token ids (B, T), ``T <= block_size``, to logits (B, T, vocab_size)
as :class:`~seeking.models.GPTMoE` does; ``mask`` (B, T) bool marks real tokens and is passed on as
the attention mask, so padding is neither attended to nor counted. The router's load-balancing loss
is not added (``output_router_logits`` is off): the arms of an experiment differ only in the
optimizer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..integrations import require
from ..integrations.transformers import (
    HF_CONFIG_FILE,
    HF_FAMILIES,
    TINY_CONFIGS,
    causal_lm,
    excitable,
    is_experts_module,
    tiny_config,
)
from .registry import ModelFolder, register_model, register_model_folder


class HFCausalLM(nn.Module):
    """A transformers causal LM (``hf``) behind seeking's language-model interface; an MoE one is made
    excitable."""

    def __init__(self, hf: nn.Module, block_size: int, family: str) -> None:
        super().__init__()
        vocab_size = hf.config.vocab_size
        positions = getattr(hf.config, "max_position_embeddings", None)
        if positions is not None and block_size > positions:
            raise ConfigError(
                f"block_size {block_size} exceeds the model's max_position_embeddings {positions}: "
                f"use --block-size {positions} or less"
            )
        self.hf = hf
        if any(is_experts_module(m) for m in hf.modules()):
            excitable(hf)
        self.cfg = {"family": family, "vocab_size": vocab_size, "block_size": block_size}

    @classmethod
    def from_folder(cls, path: str | Path, vocab_size: int, block_size: int) -> HFCausalLM:
        """The causal LM saved in the local folder ``path`` (loaded offline, with its weights as float32, in
        training mode), for data of ``vocab_size`` token ids; ``ConfigError`` if the folder is no causal LM or has
        fewer token ids than the data."""
        try:
            with _no_progress_bar():  # loading takes a moment; its bar would break the run's own output
                # float32 whatever the folder's dtype: the optimizer steps full-precision weights (--amp
                # computes in bfloat16), and both models of a pair hold the same dtype
                hf = causal_lm(path, dtype=torch.float32)
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError) as exc:  # a folder transformers cannot read
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load the causal LM in {str(path)!r}: {first}") from None
        if hf.config.vocab_size < vocab_size:
            raise ConfigError(
                f"the model in {str(path)!r} has {hf.config.vocab_size} token ids but the text's vocabulary has "
                f"{vocab_size}: use a model with a vocabulary at least that large (or the model's own --tokenizer)"
            )
        # from_pretrained returns the model in eval mode, where nothing is counted and dropout is off
        return cls(hf.train(), block_size, family=hf.config.model_type)

    def recipe(self) -> tuple[str, dict[str, Any]]:
        """``("hf_causal_lm", {"config": ...})``: what rebuilds this model's architecture without its folder."""
        return "hf_causal_lm", {"config": json.loads(self.hf.config.to_json_string(use_diff=False))}

    def forward(self, idx: Tensor, mask: Tensor | None = None) -> Tensor:
        if idx.shape[1] > self.cfg["block_size"]:
            raise ConfigError(f"sequence length {idx.shape[1]} exceeds block_size {self.cfg['block_size']}")
        attention_mask = None if mask is None else mask.long()
        return self.hf(input_ids=idx, attention_mask=attention_mask, use_cache=False).logits


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    logging = require("transformers.utils.logging", "transformers")
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _tiny_family(family: str, layers: int, suffix: str):
    def build(vocab_size: int, block_size: int = 128, config: dict[str, Any] | None = None) -> HFCausalLM:
        fields = {"num_hidden_layers": layers, **(config or {})}
        hf_config = tiny_config(family, vocab_size=vocab_size, max_positions=block_size, **fields)
        return HFCausalLM(causal_lm(hf_config), block_size, family=family)

    build.__name__ = f"hf_{family}_{suffix}"
    kind = "MoE" if family in HF_FAMILIES else "dense"
    build.__doc__ = (
        f"A tiny random-init {family} ({kind}) causal LM with {layers} layers; ``config``: overrides of the "
        "transformers configuration (e.g. ``{'hidden_size': 64}``)."
    )
    return build


@register_model
def hf_causal_lm(vocab_size: int, block_size: int, config: dict[str, Any]) -> HFCausalLM:
    """A random-init transformers causal LM of the configuration ``config`` (``PretrainedConfig.to_dict()``
    of a model folder, with its ``model_type``), what a saved model file of a folder's model records."""
    transformers = require("transformers", "transformers")
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ConfigError("hf_causal_lm needs the transformers configuration's 'model_type'")
    if fields.get("vocab_size", vocab_size) < vocab_size:
        raise ConfigError(f"the configuration has {fields['vocab_size']} token ids but the data has {vocab_size}")
    hf_config = transformers.AutoConfig.for_model(model_type, **fields)
    return HFCausalLM(causal_lm(hf_config), block_size, family=model_type)


# a transformers save_pretrained folder is a model name wherever one is taken
register_model_folder(
    "transformers",
    ModelFolder(marker=HF_CONFIG_FILE, like="hf_causal_lm", load=HFCausalLM.from_folder, recipe=HFCausalLM.recipe),
)

for _family in TINY_CONFIGS:
    for _layers, _suffix in ((2, "tiny"), (4, "tiny_4l")):
        register_model(_tiny_family(_family, _layers, _suffix))
