"""The weights map: which base tensor lives where in the motivated model.

Each :class:`MapEntry` ties one base tensor (parameter or buffer, by state-dict name) to a region of
one motivated tensor. Depth growth maps whole tensors (``index == ()``); width growth maps a base
tensor onto the leading slice of every dimension that grew. Attention projections are mapped per
head: both tensors are first viewed with the heads as a dimension of their own (``qkv`` as
``(3, heads, head_dim, in)``, the output projection as ``(out, heads, head_dim)``), so base head
``h`` maps onto motivated head ``h`` (its leading ``head_dim`` features) and queries onto queries,
not onto a naive leading slice of the whole. The layouts of :data:`LAYOUTS` know which modules to
view so (timm's and this project's ``qkv``, GPT-2's ``c_attn`` fused on dim 1, transformers'
``q_proj``/``k_proj``/``v_proj``/``o_proj``, stacked MoE experts' ``gate_up_proj``); another tensor
named as fused (:data:`FUSED_NAMES`) whose fused dim grows is refused. Non-persistent buffers
(rotary frequencies, position ids) are derived from each model's configuration and never mapped.
Motivated tensors that no entry reaches are the *extra capacity*; added blocks among them are made
to start as the identity by the rules of :mod:`seeking.motivation.identity`. Where names are
positions rather than roles (an ``nn.Sequential`` with an inserted layer), layers are paired by
structure instead (:func:`_pair_by_role`), and :meth:`WeightMap.check_start` checks on a probe
batch that the motivated model starts as the base's function.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from ..errors import ConfigError, SeekingWarning
from .identity import make_identity

Direction = Literal["to_motivated", "to_base"]
Probe = tuple[tuple[Any, ...], dict[str, Any]]  # positional and keyword arguments of both models' forward


@dataclass(frozen=True)
class MapEntry:
    base: str
    motivated: str
    index: tuple[slice, ...] = ()
    buffer: bool = False
    base_view: tuple[int, ...] = ()  # shapes both tensors are viewed as before indexing; () = as they are
    motivated_view: tuple[int, ...] = ()

    def region(self, motivated_tensor: torch.Tensor) -> torch.Tensor:
        """The view of the motivated tensor that holds the base tensor (shaped like :meth:`source`)."""
        viewed = motivated_tensor.view(self.motivated_view) if self.motivated_view else motivated_tensor
        return viewed[self.index] if self.index else viewed

    def source(self, base_tensor: torch.Tensor) -> torch.Tensor:
        """The base tensor shaped like :meth:`region` (a view)."""
        return base_tensor.view(self.base_view) if self.base_view else base_tensor


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # Looked up on every use, not cached: ``model.to(...)`` replaces buffer objects.
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _shareable(region: Tensor, tensor: Tensor) -> bool:
    """Whether ``tensor`` can become the view ``region`` with bit-identical results: a strided region
    would make matrix products sum in another order."""
    return region.is_contiguous() and region.shape == tensor.shape and region.dtype == tensor.dtype


def _same_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _derived_buffers(model: nn.Module) -> set[str]:
    """The names of the non-persistent buffers of ``model``: values derived from its configuration
    (rotary frequencies, position ids), neither learned nor measured. Never mapped: each model keeps
    its own (a wider head has other rotary frequencies than the base's)."""
    return {
        f"{name}.{buffer}" if name else buffer
        for name, module in model.named_modules()
        for buffer in module._non_persistent_buffers_set
    }


def _mappable(model: nn.Module) -> dict[str, torch.Tensor]:
    derived = _derived_buffers(model)
    return {name: tensor for name, tensor in _tensors(model).items() if name not in derived}


def _format_region(entry: MapEntry) -> str:
    if not entry.index:
        return "all"
    region = "[" + ", ".join(f":{s.stop}" for s in entry.index) + "]"
    return f"{region} of view {entry.motivated_view}" if entry.motivated_view else region


# A layout views the tensors of one kind of module with the heads (or the fused parts) as dimensions
# of their own, so that width growth maps head onto head and part onto part; it returns
# {tensor name within the module: view shape}, {} for modules it does not know.
Layout = Callable[[nn.Module], dict[str, tuple[int, ...]]]
LAYOUTS: dict[str, Layout] = {}


def _layout(name: str) -> Callable[[Layout], Layout]:
    def register(layout: Layout) -> Layout:
        LAYOUTS[name] = layout
        return layout

    return register


@_layout("fused_qkv")
def _fused_qkv(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """timm's and this project's attention: ``num_heads`` and a fused ``qkv`` linear layer (weight
    ``(3 * heads * head_dim, in)``); the output projection ``proj`` takes the heads' concatenated outputs."""
    qkv, heads = getattr(module, "qkv", None), getattr(module, "num_heads", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(heads, int) or qkv.out_features % (3 * heads):
        return {}
    head_dim = qkv.out_features // (3 * heads)
    views = {"qkv.weight": (3, heads, head_dim, qkv.in_features)}
    if qkv.bias is not None:
        views["qkv.bias"] = (3, heads, head_dim)
    proj = getattr(module, "proj", None)
    if isinstance(proj, nn.Linear) and proj.in_features == heads * head_dim:
        views["proj.weight"] = (proj.out_features, heads, head_dim)
    return views


@_layout("c_attn")
def _c_attn(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """GPT-2's attention and nanoGPT-like ones (heads in ``num_heads`` or ``n_head``): ``c_attn`` fuses
    queries, keys and values, and ``c_proj`` takes the heads' concatenated outputs. transformers'
    ``Conv1D`` stores weights as ``(in, out)``, so there ``c_attn`` is fused on dim 1 (``(in, 3 * width)``;
    ``(in, 2 * width)``, keys and values, in cross-attention, whose queries are ``q_attn``);
    ``nn.Linear`` stores ``(out, in)``: fused on dim 0."""
    heads = getattr(module, "num_heads", getattr(module, "n_head", None))
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    weight, out = getattr(c_attn, "weight", None), getattr(c_proj, "weight", None)
    if not isinstance(heads, int) or not isinstance(weight, torch.Tensor) or not isinstance(out, torch.Tensor):
        return {}
    if weight.dim() != 2 or out.dim() != 2:
        return {}
    linear = isinstance(c_attn, nn.Linear)  # else Conv1D-like: (in, out)
    width, fused = (out.shape[1], weight.shape[0]) if linear else (out.shape[0], weight.shape[1])
    if width % heads or fused % width:
        return {}
    chunks, head = fused // width, (heads, width // heads)
    if linear:
        views = {"c_attn.weight": (chunks, *head, weight.shape[1]), "c_proj.weight": (out.shape[0], *head)}
    else:
        views = {"c_attn.weight": (weight.shape[0], chunks, *head), "c_proj.weight": (*head, out.shape[1])}
        q_attn = getattr(getattr(module, "q_attn", None), "weight", None)
        if isinstance(q_attn, torch.Tensor):
            views |= {"q_attn.weight": (q_attn.shape[0], *head), "q_attn.bias": head}
    views["c_attn.bias"] = (chunks, *head)
    return {n: v for n, v in views.items() if _has_tensor(module, n)}


@_layout("q_k_v_o")
def _q_k_v_o(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """transformers' attention modules (Llama and its kin, ViT): ``head_dim`` and linear ``q_proj``,
    ``k_proj``, ``v_proj`` (``(heads * head_dim, in)``) and ``o_proj`` (``(out, heads * head_dim)``).
    With grouped queries (fewer key/value heads) query heads are viewed by the key/value head they
    read, ``(kv_heads, groups, head_dim, ...)``, so a base query head keeps its key/value head."""
    head_dim = getattr(module, "head_dim", None)
    layers = [getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if not isinstance(head_dim, int) or not all(isinstance(layer, nn.Linear) for layer in layers):
        return {}
    q, k, v, o = layers
    if q.out_features % head_dim or k.out_features % head_dim or v.out_features != k.out_features:
        return {}
    heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
    if heads % kv_heads or o.in_features != q.out_features:
        return {}
    grouped = (kv_heads, heads // kv_heads, head_dim)
    views = {
        "q_proj.weight": (*grouped, q.in_features),
        "q_proj.bias": grouped,
        "o_proj.weight": (o.out_features, *grouped),
    }
    for name, layer in (("k_proj", k), ("v_proj", v)):
        views |= {f"{name}.weight": (kv_heads, head_dim, layer.in_features), f"{name}.bias": (kv_heads, head_dim)}
    return {n: view for n, view in views.items() if _has_tensor(module, n)}


@_layout("stacked_experts")
def _stacked_experts(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """transformers 5's MoE experts (``use_experts_implementation``): stacked ``gate_up_proj`` holds
    both projections on its output dim (``(experts, 2 * inner, hidden)``, or ``(experts, hidden, 2 *
    inner)`` where ``is_transposed``), one after the other (``is_concatenated``) or interleaved (GPT-OSS);
    ``gate_up_proj_bias`` ``(experts, 2 * inner)`` the same way."""
    gate_up = getattr(module, "gate_up_proj", None)
    transposed, concatenated = getattr(module, "is_transposed", None), getattr(module, "is_concatenated", None)
    if not isinstance(gate_up, torch.Tensor) or gate_up.dim() != 3 or not isinstance(transposed, bool):
        return {}
    dim = 2 if transposed else 1
    if not isinstance(concatenated, bool) or gate_up.shape[dim] % 2:
        return {}
    inner = gate_up.shape[dim] // 2
    split = (2, inner) if concatenated else (inner, 2)
    views = {"gate_up_proj": (*gate_up.shape[:dim], *split, *gate_up.shape[dim + 1 :])}
    bias = getattr(module, "gate_up_proj_bias", None)
    if isinstance(bias, torch.Tensor) and bias.dim() == 2:
        views["gate_up_proj_bias"] = (bias.shape[0], *split)
    return views


def _has_tensor(module: nn.Module, name: str) -> bool:
    owner, _, attribute = name.rpartition(".")
    return isinstance(getattr(module.get_submodule(owner) if owner else module, attribute, None), torch.Tensor)


def _head_views(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Per-head (per-part) views of the tensors of ``model`` that a layout of :data:`LAYOUTS` knows,
    by tensor name; the first layout that knows a module gives its views."""
    views = {}
    for name, module in model.named_modules():
        found = next((v for layout in LAYOUTS.values() if (v := layout(module))), {})
        views |= {f"{name}.{n}" if name else n: view for n, view in found.items()}
    return views


# Names of tensors that hold several projections side by side (queries, keys and values; an MLP's gate
# and up projections; DeepSeek's latent attention: [latent | rotary key] rows, per head [no-rope | rope]
# and [key | value] rows) in the model families known to fuse them, with the dim that holds the parts
# (None: it depends on the layer's layout). Where that dim grows, a leading slice would mix the parts
# (the base's keys in the motivated model's queries), so such a tensor maps through a layout only.
FUSED_NAMES: dict[str, int | None] = {
    "qkv": 0,
    "query_key_value": 0,
    "Wqkv": 0,
    "W_pack": 0,
    "qkv_proj": 0,
    "c_attn": None,  # dim 1 in GPT-2's Conv1D, dim 0 in an nn.Linear
    "gate_up_proj": None,  # dim 0 in an nn.Linear, 1 or 2 in stacked experts
    "kv_a_proj_with_mqa": 0,
    "q_b_proj": 0,
    "kv_b_proj": 0,
}


def _mixes_fused_parts(name: str, small: tuple[int, ...], large: tuple[int, ...]) -> bool:
    """Whether a leading slice of ``small`` in ``large`` would mix the parts of a fused tensor."""
    for part in name.split("."):
        if (key := part.removesuffix("_bias")) in FUSED_NAMES:
            dim = FUSED_NAMES[key]
            return small != large if dim is None else small[dim] != large[dim]
    return False


def _chunk_view(shape: torch.Size, chunks: int) -> tuple[int, ...]:
    return (chunks, shape[0] // chunks, *shape[1:])


def _entry(
    name: str,
    tensor: torch.Tensor,
    counterpart: str,
    big: torch.Tensor,
    buffer: bool,
    heads: tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]],
    fused: dict[str, int],
) -> MapEntry:
    """The entry that puts base tensor ``name`` into motivated tensor ``counterpart``: whole, or onto
    the leading slice of every dimension that grew (per head, per fused chunk); ConfigError if it does not fit."""
    views = (heads[0].get(name), heads[1].get(counterpart))
    if tensor.shape == big.shape and views[0] == views[1]:
        return MapEntry(name, counterpart, (), buffer)
    chunks = next((n for suffix, n in fused.items() if name.endswith(suffix)), 1)
    if views[0] and views[1]:
        base_view, motivated_view = views
    elif chunks > 1 and tensor.shape[0] % chunks == 0 and big.shape[0] % chunks == 0:
        base_view, motivated_view = _chunk_view(tensor.shape, chunks), _chunk_view(big.shape, chunks)
    else:
        base_view, motivated_view = (), ()
    small, large = base_view or tuple(tensor.shape), motivated_view or tuple(big.shape)
    fits = len(small) == len(large) and all(b <= m for b, m in zip(small, large, strict=True))
    if chunks == 1 and not base_view and _mixes_fused_parts(name, tuple(tensor.shape), tuple(big.shape)):
        raise ConfigError(
            f"cannot map the base tensor {name!r} {tuple(tensor.shape)} onto {counterpart!r} "
            f"{tuple(big.shape)}: it holds several projections side by side (queries, keys and values, or "
            "gate and up), and no known layout splits it here, so a leading slice would put one part "
            "into another (the base's keys into the motivated model's queries). Grow depth only, or map "
            "it yourself (overrides=, or fused= for parts stacked on dim 0)"
        )
    if not fits or (chunks > 1 and not base_view):
        viewed = (
            f"; per head (or part) they are {base_view} and {motivated_view}, which do not nest (grouped-query "
            "attention: key/value heads, query heads per key/value head, head size, inputs; none may shrink)"
            if base_view and tuple(tensor.shape) == tuple(big.shape)
            else ""
        )
        raise ConfigError(
            f"cannot map the base tensor {name!r}: shape {tuple(tensor.shape)} in the base, "
            f"{tuple(big.shape)} in the motivated model{viewed} (a base tensor must fit inside its "
            "counterpart on every dimension, and attention heads inside heads)"
        )
    index = tuple(slice(0, n) for n in small)
    return MapEntry(name, counterpart, index, buffer, base_view, motivated_view)


def _layers(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The modules below the root that own parameters themselves, in registration order, each with
    the names of the tensors (parameters and buffers) it owns."""
    layers = []
    for name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if name and own:
            buffers = [n for n, _ in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set]
            layers.append((name, own + buffers))
    return layers


def _pair_by_role(
    base: nn.Module, motivated: nn.Module, entry: Callable[[str, torch.Tensor, str], MapEntry]
) -> dict[str, str]:
    """Base tensor name -> motivated tensor name where names are positions, not roles; {} where
    names can be trusted.

    Names are trusted when the base's output layer (its last layer with parameters) maps by name to
    the motivated model's output layer: true of grown copies that name blocks by stage and index.
    In a plain ``nn.Sequential`` an inserted layer shifts every later index, so the name of the
    base's classifier can belong to the motivated model's new hidden layer. Then the layers are
    aligned by structure: output layer to output layer, and the others, in order, onto a
    subsequence of the motivated model's layers of the same type into which all their tensors fit,
    choosing the alignment with the most layers of equal shapes (the earliest among equals: added
    layers go late, as in depth growth). Returns {} (names) when no such alignment exists.
    """
    small, large = _layers(base), _layers(motivated)
    if not small or not large or small[-1][0] == large[-1][0]:
        return {}
    b_modules, m_modules = dict(base.named_modules()), dict(motivated.named_modules())
    b_tensors = _tensors(base)

    @functools.cache
    def score(i: int, j: int) -> int | None:
        """1 if layer i of the base equals layer j of the motivated model in shape, 0 if it fits, None if not."""
        (b_name, names), (m_name, m_names) = small[i], large[j]
        if type(b_modules[b_name]) is not type(m_modules[m_name]) or set(names) != set(m_names):
            return None
        try:
            regions = [entry(f"{b_name}.{n}", b_tensors[f"{b_name}.{n}"], f"{m_name}.{n}").index for n in names]
        except (ConfigError, KeyError):  # a tensor without a mappable counterpart (e.g. a tied head)
            return None
        return int(not any(regions))

    n, m = len(small) - 1, len(large) - 1  # the output layers are paired outside the alignment
    if score(n, m) is None:
        return {}
    # best[i][j]: the most equal-shape layers when base layers i.. align into motivated layers j..
    # (None: impossible)
    best: list[list[int | None]] = [[None] * (m + 1) for _ in range(n)] + [[0] * (m + 1)]

    def take(i: int, j: int) -> int | None:
        rest = best[i + 1][j + 1]
        s = None if rest is None else score(i, j)
        return None if s is None else s + rest

    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            options = [v for v in (take(i, j), best[i][j + 1]) if v is not None]
            best[i][j] = max(options, default=None)
    if best[0][0] is None:
        return {}
    pairs, j = [(n, m)], 0
    for i in range(n):
        while take(i, j) != best[i][j]:  # skipping j keeps best[i][j] (the earliest match wins ties)
            j += 1
        pairs.append((i, j))
        j += 1
    return {f"{small[i][0]}.{t}": f"{large[j][0]}.{t}" for i, j in pairs for t in small[i][1]}


@dataclass
class WeightMap:
    """A deterministic map from base tensors to motivated tensors (see module docstring)."""

    entries: list[MapEntry]
    extra: list[str] = field(default_factory=list)
    # base names whose data is a view of the motivated tensor -> the data pointers (base, motivated) when
    # aliased: a switch that finds others (``Module.to``, a ``.data`` swap) copies the entry and aliases it again
    aliased: dict[str, tuple[int, int]] = field(default_factory=dict)
    # added blocks that cannot start as the identity, with the reason (filled by init_extra_capacity)
    not_identity: dict[str, str] = field(default_factory=dict)
    # what a switch reuses (see _located, _views): where each tensor lives, and the region views
    _slots: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _view_cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    # zero-copy optimizer state: (base name, state key) -> the (base, motivated) state tensors it aliased
    _state_aliases: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def infer(
        cls,
        base: nn.Module,
        motivated: nn.Module,
        overrides: dict[str, MapEntry] | None = None,
        fused: dict[str, int] | None = None,
    ) -> WeightMap:
        """Align two models of one family by name and shape.

        Every base tensor (parameter or persistent buffer: non-persistent buffers are derived from
        each model's configuration and never mapped) maps to the motivated tensor of the same name:
        whole if the shapes are equal (depth growth keeps the first blocks of each stage), else onto
        the leading slice of every dimension that grew (width growth). Attention projections and
        fused tensors are viewed per head and per part first where a layout of :data:`LAYOUTS` knows
        them (see the module docstring). Other tensors whose name ends with a key of ``fused``
        (default ``{"qkv.weight": 3, "qkv.bias": 3}``, for attention modules without ``num_heads``)
        are split into that many chunks on dimension 0 first; any other tensor named as fused
        (:data:`FUSED_NAMES`) whose fused dim grows is refused (ConfigError naming it), as is a
        pair of Hugging Face models whose configurations disagree on what the models compute
        (vocabulary, labels: :data:`MUST_MATCH`). ``overrides`` maps base names to entries of the
        user's own, used as given. Where the names of the output layers differ, names are
        positions, not roles: layers are paired by structure instead (see :func:`_pair_by_role`).
        """
        _check_pair(base, motivated)
        overrides = overrides or {}
        fused = {"qkv.weight": 3, "qkv.bias": 3} if fused is None else fused
        target = _mappable(motivated)
        buffers = {name for name, _ in base.named_buffers()}
        heads = (_head_views(base), _head_views(motivated))

        def entry(name: str, tensor: torch.Tensor, counterpart: str) -> MapEntry:
            return _entry(name, tensor, counterpart, target[counterpart], name in buffers, heads, fused)

        roles = _pair_by_role(base, motivated, entry)
        entries = []
        for name, tensor in _mappable(base).items():
            if name in overrides:
                entries.append(overrides[name])
                continue
            counterpart = roles.get(name, name)
            if counterpart not in target:
                raise ConfigError(
                    f"cannot map the base tensor {name!r} {tuple(tensor.shape)}: the motivated model "
                    "has no tensor of that name; is the motivated model a grown copy of the base? "
                    "(pass overrides= for tensors that moved)"
                )
            entries.append(entry(name, tensor, counterpart))
        mapped = {e.motivated for e in entries}
        return cls(entries, [name for name in target if name not in mapped])

    def parameters(self) -> Iterator[MapEntry]:
        return (e for e in self.entries if not e.buffer)

    def selected(self, buffers: bool) -> Iterator[MapEntry]:
        """All entries, or only the parameters' when mapped buffers are not to be synced."""
        return iter(self.entries) if buffers else self.parameters()

    @torch.no_grad()
    def copy(self, base: nn.Module, motivated: nn.Module, direction: Direction, buffers: bool) -> None:
        """Copy the shared weights (and the mapped buffers if ``buffers``) in one direction.

        Aliased entries (:meth:`alias`) are skipped while they still share storage; one that no longer
        does (``Module.to`` made new storage) is copied, then aliased again, so sharing never ends
        silently."""
        entries = tuple(self.selected(buffers))
        b = self._located(base, tuple(e.base for e in entries))
        m = self._located(motivated, tuple(e.motivated for e in entries))
        todo, broken = [], []
        for i, e in enumerate(entries):
            pointers = self.aliased.get(e.base)
            if pointers is None:
                todo.append(i)
            elif pointers != (b[i].data_ptr(), m[i].data_ptr()):
                todo.append(i)
                broken.append(i)
        if not todo:  # zero-copy sharing covers everything
            return
        regions, sources = self._views(
            "weights", tuple(entries[i] for i in todo), [b[i] for i in todo], [m[i] for i in todo]
        )
        # one batched copy: per-tensor dispatch, not the bytes, dominates a switch of many small tensors
        if direction == "to_motivated":
            torch._foreach_copy_(regions, sources)
        else:
            torch._foreach_copy_(sources, regions)
        for i in broken:
            self._alias_one(entries[i], b[i], m[i])

    def _located(self, model: nn.Module, names: tuple[str, ...]) -> list[torch.Tensor]:
        """``model``'s tensors named ``names``, as they are now. Where each lives (its module's
        parameter or buffer dict) is found once per model: a switch then reads each tensor from its
        dict, so ``model.to(...)``, which replaces buffer objects, is still seen."""
        found = self._slots.get((id(model), names))
        if found is None or found[0] is not model:
            slots = []
            for name in names:
                owner, _, leaf = name.rpartition(".")
                module = model.get_submodule(owner)
                slots.append((module._parameters if leaf in module._parameters else module._buffers, leaf))
            found = self._slots[(id(model), names)] = (model, slots)
        return [where[leaf] for where, leaf in found[1]]

    def _views(
        self, kind: str, entries: tuple[MapEntry, ...], base_side: list[Tensor], motivated_side: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Each entry's region of its motivated-side tensor and its base-side tensor shaped like it.

        The views are made once and reused while every tensor still has the storage they view (the
        same data pointers): a ``.data`` swap (zero-copy sharing, ``Module.to``) or a new optimizer
        state tensor makes them again, so a cached view never writes to memory a model has left.
        """
        key = (kind, tuple(e.base for e in entries))
        pointers = [t.data_ptr() for t in base_side] + [t.data_ptr() for t in motivated_side]
        cached = self._view_cache.get(key)
        if cached is None or cached[0] != pointers:
            regions = [e.region(t) for e, t in zip(entries, motivated_side, strict=True)]
            sources = [e.source(t) for e, t in zip(entries, base_side, strict=True)]
            cached = self._view_cache[key] = (pointers, regions, sources)
        return cached[1], cached[2]

    @torch.no_grad()
    def alias(self, base: nn.Module, motivated: nn.Module, buffers: bool) -> list[str]:
        """Zero-copy sharing: make each mapped base tensor a view of its region of the motivated
        tensor, so an update of either model is seen by the other with nothing copied.

        The base keeps its parameter objects (its optimizer stays valid); only their storage
        changes. Only regions that are contiguous are shared: a strided weight makes matrix
        multiplication sum in another order, so results would differ from copying at rounding level;
        such entries (width growth on an inner dimension, chunked ``qkv``) stay on copying.
        ``Module.to`` afterwards makes new storage: the next :meth:`copy` sees it, copies those
        entries and aliases them again. Returns the aliased base names.
        """
        self.copy(base, motivated, "to_motivated", buffers=buffers)
        b, m = _tensors(base), _tensors(motivated)
        for e in self.selected(buffers):
            self._alias_one(e, b[e.base], m[e.motivated])
        return sorted(self.aliased)

    def _alias_one(self, e: MapEntry, base_tensor: Tensor, motivated_tensor: Tensor) -> None:
        region = e.region(motivated_tensor)
        if _shareable(region, base_tensor):
            base_tensor.data = region
            self.aliased[e.base] = (base_tensor.data_ptr(), motivated_tensor.data_ptr())
        else:
            self.aliased.pop(e.base, None)

    def carry_optimizer_state(
        self,
        source: torch.optim.Optimizer,
        target: torch.optim.Optimizer,
        base: nn.Module,
        motivated: nn.Module,
        direction: Direction,
        share: bool = False,
    ) -> None:
        """Copy the optimizer state of shared weights (momentum, Adam moments, step) along the map,
        so the state follows the weights like the weights follow the map.

        With ``share``, the state of an aliased weight (:meth:`alias`) is aliased too: after one copy,
        the base optimizer's state tensor becomes a view of its region of the motivated optimizer's,
        and later switches copy nothing for it. Each switch checks that both optimizers still hold
        those tensors (``load_state_dict`` and some optimizers replace them); where one does not,
        the state is copied along the direction, as without ``share``, and aliased again."""
        entries = tuple(self.parameters())
        b = self._located(base, tuple(e.base for e in entries))
        m = self._located(motivated, tuple(e.motivated for e in entries))
        to_motivated = direction == "to_motivated"
        carried: list[MapEntry] = []  # per carried state tensor: its entry, base-side and motivated-side tensors
        base_side, motivated_side, whole_targets, whole_sources = [], [], [], []
        to_alias = []  # (entry, key, base-side state, motivated-side state) to alias after the copy
        for e, base_param, motivated_param in zip(entries, b, m, strict=True):
            src_param, dst_param = (base_param, motivated_param) if to_motivated else (motivated_param, base_param)
            src_state = source.state.get(src_param)
            if not src_state:
                continue
            dst_state = target.state[dst_param]
            aliasable = share and e.base in self.aliased
            for key, value in src_state.items():
                if not torch.is_tensor(value) or value.shape != src_param.shape:  # a step count, a scalar
                    dst = dst_state.get(key)
                    if torch.is_tensor(value) and torch.is_tensor(dst) and _same_kind(dst, value):
                        whole_targets.append(dst)  # in place: the same values as a clone, one copy for all
                        whole_sources.append(value)
                    else:
                        dst_state[key] = value.clone() if torch.is_tensor(value) else value
                    continue
                dst = dst_state.get(key)
                if aliasable:
                    pair = (value, dst) if to_motivated else (dst, value)
                    held = self._state_aliases.get((e.base, key))
                    if held is not None and held[0] is pair[0] and held[1] is pair[1]:
                        continue  # one storage already: nothing to carry
                if dst is None or dst.shape != dst_param.shape:
                    dst = dst_state[key] = torch.zeros_like(dst_param)
                carried.append(e)
                base_side.append(value if to_motivated else dst)
                motivated_side.append(dst if to_motivated else value)
                if aliasable:
                    to_alias.append((e, key, *((src_state, dst_state) if to_motivated else (dst_state, src_state))))
        regions, shaped = self._views("optimizer state", tuple(carried), base_side, motivated_side)
        targets, sources = (regions, shaped) if to_motivated else (shaped, regions)
        if targets or whole_targets:
            with torch.no_grad():
                torch._foreach_copy_(targets + whole_targets, sources + whole_sources)
        for e, key, base_state, motivated_state in to_alias:
            region = e.region(motivated_state[key])
            if _shareable(region, base_state[key]):
                base_state[key] = region
                self._state_aliases[(e.base, key)] = (region, motivated_state[key])

    def init_extra_capacity(self, motivated: nn.Module) -> list[str]:
        """Make every added residual block start as the identity, so that the motivated model
        computes the base's function. A block counts as added when none of its parameters is
        mapped; the rules of :data:`~seeking.motivation.identity.IDENTITY_RULES` say how (and
        :func:`~seeking.motivation.identity.register_identity_rule` adds one). Returns the names of
        the blocks it initialised; the blocks a rule knows cannot be the identity go to
        :attr:`not_identity`, with the reason, for :meth:`inexact_reasons`."""
        mapped = {e.motivated for e in self.entries}
        done: list[str] = []
        self.not_identity = {}
        for name, module in motivated.named_modules():
            if any(name.startswith(d + ".") for d in [*done, *self.not_identity]):
                continue
            names = [f"{name}.{n}" for n, _ in module.named_parameters()]
            if not names or any(n in mapped for n in names):
                continue
            verdict = make_identity(module)
            if verdict is True:
                done.append(name)
            elif verdict:
                self.not_identity[name] = verdict
        return done

    def inexact_reasons(self, identity_blocks: list[str]) -> list[str]:
        """Why the motivated model cannot be expected to compute the base's function exactly at the
        start ([] when it can): width growth (the extra channels feed the next layer, norms see more
        features), added blocks that cannot be the identity (:attr:`not_identity`: post-norm blocks),
        or other extra capacity outside the blocks made identity (``identity_blocks``)."""
        reasons = []
        sliced = [e.base for e in self.entries if e.index]
        if sliced:
            reasons.append(f"{len(sliced)} base tensors map onto a leading slice (width growth), e.g. {sliced[0]!r}")
        by_reason: dict[str, list[str]] = {}
        for block, why in self.not_identity.items():
            by_reason.setdefault(why, []).append(block)
        for why, blocks in by_reason.items():
            more = f" and {len(blocks) - 4} more" if len(blocks) > 4 else ""
            reasons.append(f"added blocks {', '.join(map(repr, blocks[:4]))}{more} cannot start as the identity: {why}")
        covered = [*identity_blocks, *self.not_identity]
        loose = [n for n in self.extra if not any(n.startswith(f"{block}.") for block in covered)]
        if loose:
            more = f" and {len(loose) - 4} more" if len(loose) > 4 else ""
            reasons.append(
                f"extra capacity not initialised as the identity: {', '.join(loose[:4])}{more} "
                "(seeking.motivation.register_identity_rule teaches it a block of yours)"
            )
        return reasons

    @torch.no_grad()
    def check_start(
        self,
        base: nn.Module,
        motivated: nn.Module,
        probe: tuple[Any, ...] | None,
        reasons: list[str],
        probe_kwargs: dict[str, Any] | None = None,
    ) -> float | None:
        """Check, right after the motivated model received the base's tensors, that the map holds.

        Both directions: every mapped region of the motivated model reads back equal to its base
        tensor (else ConfigError: two entries overlap), and on ``probe`` (positional arguments of
        both models' forward, ``probe_kwargs`` its keyword arguments; None skips this half) the
        motivated model computes the base's function in eval mode: outputs within
        ``max(1e-4, sqrt(eps)) * max(1, max |base output|)`` of the base's (eps of the output
        dtype). Beyond that, it raises ConfigError with the map printed, or warns where
        ``reasons`` say why it cannot be exact (:meth:`inexact_reasons`); both name the first
        mapped layer whose output differs. Returns the largest absolute difference of the outputs
        (None without a probe); restores both models' train/eval modes.
        """
        b, m = _tensors(base), _tensors(motivated)
        unreadable = [e.base for e in self.entries if not torch.equal(e.region(m[e.motivated]), e.source(b[e.base]))]
        if unreadable:
            raise ConfigError(
                f"the weights map does not hold: {', '.join(unreadable)} cannot be read back from the motivated "
                f"model (another entry writes over its region); give every base tensor a region of its own\n{self}"
            )
        if probe is None:
            return None
        call = (probe, probe_kwargs or {})
        outputs, tol = _eval_outputs((base, motivated), call)
        shapes = [[tuple(t.shape) if torch.is_tensor(t) else type(t).__name__ for t in out] for out in outputs]
        if shapes[0] != shapes[1]:  # no map can make one function of the other: not a pair at all
            raise ConfigError(
                f"the two models give outputs of different shapes on the probe batch (base {shapes[0]}, "
                f"motivated {shapes[1]}): a motivated model must compute what the base does (the same classes, "
                "vocabulary, output heads); build both with the same output size"
            )
        diff = _largest_difference(*outputs)
        if diff <= tol:
            return diff
        message = (
            f"the motivated model does not start as the base's function: on the probe batch (eval mode) "
            f"their outputs differ by up to {diff:.3g} (tolerance {tol:.2g}); "
            + self._first_divergence(base, motivated, call)
        )
        if not reasons:
            raise ConfigError(
                f"{message}\nThe weights map:\n{self}\nFix the map (weight_map= or overrides=, pairing layers by "
                "role) or make the added blocks start as the identity"
            )
        # a short map is shown whole; a long one (width growth: hundreds of rows) is one print away
        shown = f"\nThe weights map:\n{self}" if len(self.entries) <= 40 else " (print(motivator.map) shows the map)"
        warnings.warn(
            f"{message}. Expected, as it cannot be exact: {'; '.join(reasons)}{shown}", SeekingWarning, stacklevel=3
        )
        return diff

    def _first_divergence(self, base: nn.Module, motivated: nn.Module, probe: Probe) -> str:
        """Names the first mapped layer (in the base's execution order) whose output differs on the
        probe, with its entries; one more forward pass of each model, run only after a failed check."""
        pairs: dict[str, str] = {}
        for e in self.entries:
            pairs.setdefault(e.base.rpartition(".")[0], e.motivated.rpartition(".")[0])
        seen: list[dict[str, torch.Tensor]] = [{}, {}]
        handles = []
        for model, names, record in ((base, pairs, seen[0]), (motivated, set(pairs.values()), seen[1])):
            for name, module in model.named_modules():
                if name in names:
                    handles.append(module.register_forward_hook(_recorder(name, record)))
        try:
            _eval_outputs((base, motivated), probe)
        finally:
            for handle in handles:
                handle.remove()
        for b_name, out in seen[0].items():  # dicts keep the order the hooks fired in
            other = seen[1].get(pairs[b_name])
            if (
                other is None
                or out.dim() != other.dim()
                or any(s > t for s, t in zip(out.shape, other.shape, strict=True))
            ):
                continue
            diff = (other[tuple(slice(0, s) for s in out.shape)] - out).abs().max().item()
            if diff > _tolerance([out]):
                moved = [
                    f"{e.base} -> {e.motivated} [{_format_region(e)}]"
                    for e in self.entries
                    if e.base.rpartition(".")[0] == b_name
                ]
                return (
                    f"the first mapped layer whose output differs (by up to {diff:.3g}: its tensors or its input are "
                    f"wrong) is base {b_name!r} -> "
                    f"motivated {pairs[b_name]!r}, mapped by {', '.join(moved)}"
                )
        return (
            "every mapped layer agrees with its counterpart on the mapped region, so the difference comes "
            f"from the extra capacity: {', '.join(self.extra[:6])}{' ...' if len(self.extra) > 6 else ''}"
        )

    def __len__(self) -> int:
        return len(self.entries)

    def __str__(self) -> str:
        rows = [("base tensor", "motivated tensor", "region", "kind")]
        rows += [(e.base, e.motivated, _format_region(e), "buffer" if e.buffer else "parameter") for e in self.entries]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"extra capacity ({len(self.extra)} tensors): " + (", ".join(self.extra) or "none"))
        return "\n".join(lines)


def _eval_outputs(models: tuple[nn.Module, nn.Module], probe: Probe) -> tuple[list, float]:
    """Both models' output tensors on ``probe`` in eval mode, without autocast, and the tolerance for
    their difference (see :meth:`WeightMap.check_start`); train/eval modes are restored. A Hugging
    Face model runs without its key/value cache (one entry per layer: not part of the function)."""
    modes = [[(m, m.training) for m in model.modules()] for model in models]
    configs = [c for c in map(_hf_config, models) if c is not None and getattr(c, "use_cache", None) is not None]
    caches = [(c, c.use_cache) for c in configs]
    device = next(iter(models[0].parameters())).device.type
    try:
        for config in configs:
            config.use_cache = False
        with torch.no_grad(), torch.autocast(device, enabled=False):
            outputs = [tree_leaves(model.eval()(*probe[0], **probe[1])) for model in models]
    finally:
        for module, training in itertools.chain(*modes):
            module.training = training
        for config, use_cache in caches:
            config.use_cache = use_cache
    return outputs, _tolerance(outputs[0])


def _tolerance(reference: list) -> float:
    """``max(1e-4, sqrt(eps)) * max(1, max |reference|)`` over the floating tensors of ``reference``:
    rounding in the output dtype (eps), relative to the outputs' scale."""
    floats = [t for t in reference if torch.is_tensor(t) and t.is_floating_point()]
    scale = max((t.abs().max().item() for t in floats if t.numel()), default=0.0)
    eps = max((torch.finfo(t.dtype).eps for t in floats), default=0.0)
    return max(1e-4, eps**0.5) * max(1.0, scale)


def _largest_difference(first: list, second: list) -> float:
    """The largest absolute difference between two models' output tensors (inf if they differ in structure)."""
    if len(first) != len(second):
        return math.inf
    diff = 0.0
    for a, b in zip(first, second, strict=True):
        if not torch.is_tensor(a) or not torch.is_tensor(b) or a.shape != b.shape:
            return math.inf
        if a.numel():
            diff = max(diff, (a.double() - b.double()).abs().max().item())
    return diff


def _recorder(name: str, record: dict[str, torch.Tensor]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        tensors = [t for t in tree_leaves(output) if torch.is_tensor(t) and t.is_floating_point()]
        if tensors and name not in record:  # a layer called twice is compared on its first call
            record[name] = tensors[0].detach().double()

    return hook


# Fields of a Hugging Face configuration (``model.config``) that fix what a model computes from its
# input rather than its capacity: two models that disagree on one are not a base and its growth.
MUST_MATCH = (
    "model_type",
    "vocab_size",
    "num_labels",
    "problem_type",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "activation_function",  # GPT-2's name for it
    "tie_word_embeddings",
    "position_embedding_type",
    "rope_parameters",
    "rms_norm_eps",  # the norms' epsilon: the same weights normalise differently
    "layer_norm_eps",
    "layer_norm_epsilon",  # GPT-2's name for it
)


def _hf_config(model: nn.Module) -> Any:
    """The configuration of the outermost Hugging Face model in ``model`` (itself, or one it wraps):
    by duck typing, a ``config`` attribute with ``to_dict``; None if there is none."""
    configs = (getattr(m, "config", None) for m in model.modules())
    return next((c for c in configs if callable(getattr(c, "to_dict", None))), None)


def _check_pair(base: nn.Module, motivated: nn.Module) -> None:
    base_cfg, mot_cfg = getattr(base, "cfg", {}), getattr(motivated, "cfg", {})
    families = base_cfg.get("family"), mot_cfg.get("family")
    if None not in families and families[0] != families[1]:  # their tensors' names and roles differ
        raise ConfigError(
            f"the two models are of different families (base {families[0]}, motivated {families[1]}): a "
            "weights map grows a model into a larger one of its own family; pair two models of one family"
        )
    for key in ("num_classes", "in_channels", "vocab_size"):
        if key in base_cfg and key in mot_cfg and base_cfg[key] != mot_cfg[key]:
            raise ConfigError(
                f"the two models disagree on {key}: base {base_cfg[key]}, motivated {mot_cfg[key]}; "
                "build both for the same data"
            )
    dtypes = [sorted({str(p.dtype) for p in m.parameters() if p.is_floating_point()}) for m in (base, motivated)]
    if dtypes[0] != dtypes[1]:  # a switch would round the weights it copies, or train them at another precision
        raise ConfigError(
            f"the two models' weights are of different dtypes (base {', '.join(dtypes[0])}, motivated "
            f"{', '.join(dtypes[1])}): convert both to one (model.float()); compute in bfloat16 with autocast instead"
        )
    configs = _hf_config(base), _hf_config(motivated)
    if configs[0] is not None and configs[1] is not None:
        missing = object()
        for key in MUST_MATCH:
            values = [getattr(c, key, missing) for c in configs]
            if missing not in values and values[0] != values[1]:
                raise ConfigError(
                    f"the two models' configs disagree on {key}: base {values[0]!r}, motivated {values[1]!r}; "
                    f"build both with the same {key} (a motivated model computes what its base does)"
                )
    n_base = sum(p.numel() for p in base.parameters())
    n_mot = sum(p.numel() for p in motivated.parameters())
    if n_base >= n_mot:
        fix = (
            "choose a motivated model larger than the base (one that contains it)"
            if n_base == n_mot
            else "pass the small model as base and the large one as motivated"
        )
        raise ConfigError(
            f"the base model ({n_base:,} parameters) must be smaller than the motivated model ({n_mot:,}); {fix}"
        )
