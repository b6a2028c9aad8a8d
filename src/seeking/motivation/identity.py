"""Identity rules: how an added residual block is made to start as the identity.

Depth growth preserves the base's function when every added block computes ``x -> x`` at the start.
A rule knows one kind of block, by its module and parameter names (duck typing: this layer imports
no framework). Given a block it returns

- ``True`` after making the block the identity,
- ``False``, changing nothing, when it does not know the block (the next rule is tried),
- a string, changing nothing, when it knows the block and that no initialisation makes it the
  identity: the reason, which the start-of-training warning repeats (a post-norm block).

Rules are tried from the last registered to the first, so a rule of the user's
(:func:`register_identity_rule`) takes precedence over the built-in ones for the blocks it knows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..moe.block import MoEBlock

IdentityRule = Callable[[nn.Module], "bool | str"]
IDENTITY_RULES: dict[str, IdentityRule] = {}


def register_identity_rule(name: str) -> Callable[[IdentityRule], IdentityRule]:
    """Decorator: adds ``rule(block) -> bool | str`` (see the module docstring) to
    :data:`IDENTITY_RULES` under ``name``. Raises ``ConfigError`` for a name already taken.

    Example, for a block whose branch ends in ``block.out``::

        @register_identity_rule("my_block")
        def my_block(block):
            if not isinstance(getattr(block, "out", None), nn.Linear):
                return False
            nn.init.zeros_(block.out.weight); nn.init.zeros_(block.out.bias)
            return True
    """

    def register(rule: IdentityRule) -> IdentityRule:
        if name in IDENTITY_RULES:
            raise ConfigError(f"identity rule {name!r} is already registered: give yours a name of its own")
        IDENTITY_RULES[name] = rule
        return rule

    return register


@torch.no_grad()
def make_identity(block: nn.Module) -> bool | str:
    """Make ``block`` start as the identity with the first rule that knows it (the last registered
    first). Returns True when done, False (nothing changed) when no rule knows the block, or why
    it cannot be the identity (nothing changed)."""
    for rule in reversed(IDENTITY_RULES.values()):
        verdict = rule(block)
        if verdict is not False:
            return verdict
    return False


def _submodule(block: nn.Module, path: str) -> nn.Module | None:
    """The submodule at the dotted ``path`` of ``block``, or None."""
    module: object = block
    for part in path.split("."):
        module = getattr(module, part, None)
    return module if isinstance(module, nn.Module) else None


def _norms(block: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


@register_identity_rule("zero_init_last")
def _zero_init_last(block: nn.Module) -> bool:
    """Blocks with a ``zero_init_last()`` method (this project's and timm's ResNet blocks)."""
    if not callable(getattr(block, "zero_init_last", None)):
        return False
    block.zero_init_last()
    for norm in _norms(block):  # timm zeroes the scale only, which is the identity only while the shift is zero
        if not norm.weight.any():
            norm.bias.zero_()
    return True


@register_identity_rule("has_skip")
def _has_skip(block: nn.Module) -> bool:
    """Blocks with an active ``has_skip`` (timm's EfficientNet and MobileNet blocks): the last
    BatchNorm's scale and shift are zeroed."""
    norms = _norms(block)
    if getattr(block, "has_skip", False) is not True or not norms:
        return False
    norms[-1].weight.zero_()
    norms[-1].bias.zero_()
    return True


def _pre_norm(attention: str, mlp: str, outputs: frozenset[str]) -> IdentityRule:
    """The rule for pre-norm transformer blocks (``x + attention(norm(x))``, then ``+ mlp(norm(x))``;
    a norm on a branch's output, as in OLMo 2 and Gemma, keeps zero at zero): zero the tensors that
    write into the residual stream. ``attention``: the path of the attention's output projection (a
    module with a ``weight``: ``nn.Linear``, GPT-2's ``Conv1D``); ``mlp``: the path of the MLP, in which
    every module or parameter whose own name is in ``outputs`` is zeroed (a dense MLP's last layer,
    MoE experts' stacked ``down_proj`` and its bias, shared experts' last layers). The block must
    have both and at least one output in the MLP."""

    def rule(block: nn.Module) -> bool:
        projection, branch = _submodule(block, attention), _submodule(block, mlp)
        if not isinstance(getattr(projection, "weight", None), torch.Tensor) or branch is None:
            return False
        ends = [p for n, p in branch.named_parameters() if n.rpartition(".")[2] in outputs]
        ends += [p for n, m in branch.named_modules() if n.rpartition(".")[2] in outputs for p in m.parameters()]
        if not ends:
            return False
        for tensor in [*projection.parameters(recurse=False), *ends]:
            tensor.zero_()
        return True

    return rule


# kind of block: (attention output projection, MLP, the names of the MLP's outputs)
_PRE_NORM_BLOCKS = {
    "timm_vit": ("attn.proj", "mlp", frozenset({"fc2"})),
    "hf_vit": ("attention.o_proj", "mlp", frozenset({"fc2"})),  # transformers 5's ViTLayer
    "gpt2": ("attn.c_proj", "mlp", frozenset({"c_proj"})),
    # Llama, Qwen, Mistral and the MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, GPT-OSS)
    "hf_decoder": ("self_attn.o_proj", "mlp", frozenset({"down_proj", "down_proj_bias"})),
}
for _kind, (_attention, _mlp, _outputs) in _PRE_NORM_BLOCKS.items():
    register_identity_rule(_kind)(_pre_norm(_attention, _mlp, _outputs))


@register_identity_rule("seeking_moe_block")
def _seeking_moe_block(block: nn.Module) -> bool:
    """This project's :class:`~seeking.moe.MoEBlock` (GPT-MoE, ViT-MoE): zero the attention's output
    projection and every expert's second weight (stacked ``w2``, or each listed expert's last
    ``Linear``), so both residual branches add 0 whatever the router picks."""
    if not isinstance(block, MoEBlock):
        return False
    moe = block.moe
    ends = [moe.w2] if moe.storage == "stacked" else [expert[-1].weight for expert in moe.experts]
    for tensor in [*block.attn.proj.parameters(), *ends]:
        tensor.zero_()
    return True


@register_identity_rule("post_norm")
def _post_norm(block: nn.Module) -> bool | str:
    """BERT-like blocks (BERT, RoBERTa, ELECTRA...: ``attention.output.LayerNorm``, ``output.LayerNorm``)
    normalise after each residual sum: with its branches zeroed the block computes ``LayerNorm(x)``,
    not ``x``, and no initialisation of its weights changes that."""
    names = ("attention.output.LayerNorm", "output.LayerNorm")
    if any(_submodule(block, n) is None for n in names):
        return False
    return (
        "it is a post-norm block (a LayerNorm after each residual sum, as in BERT: LayerNorm(x + 0) is not x), "
        "which no initialisation makes the identity; pre-norm models (Llama, GPT-2, ViT) start exact"
    )
