"""The weights map: which base tensor lives where in the motivated model.

Each :class:`MapEntry` ties one base tensor (parameter or buffer, by state-dict name) to a region of
one motivated tensor. Depth growth maps whole tensors (``index == ()``); width growth maps a base
tensor onto the leading slice of every dimension that grew. Attention projections are mapped per
head: both tensors are first viewed with the heads as a dimension of their own (``qkv`` as
``(3, heads, head_dim, in)``, the output projection as ``(out, heads, head_dim)``), so base head
``h`` maps onto motivated head ``h`` (its leading ``head_dim`` features) and queries onto queries,
not onto a naive leading slice of the whole. Motivated tensors that no entry reaches are the
*extra capacity*.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError

Direction = Literal["to_motivated", "to_base"]


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


def _format_region(entry: MapEntry) -> str:
    if not entry.index:
        return "all"
    region = "[" + ", ".join(f":{s.stop}" for s in entry.index) + "]"
    return f"{region} of view {entry.motivated_view}" if entry.motivated_view else region


def _head_views(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Per-head views of the attention projections of ``model``, by tensor name.

    An attention module is one with ``num_heads`` and a fused ``qkv`` linear layer (timm's, this
    project's); its output projection ``proj`` (if any) takes the heads' concatenated outputs."""
    views = {}
    for name, module in model.named_modules():
        qkv, heads = getattr(module, "qkv", None), getattr(module, "num_heads", None)
        if not isinstance(qkv, nn.Linear) or not isinstance(heads, int) or qkv.out_features % (3 * heads):
            continue
        prefix = f"{name}." if name else ""
        head_dim = qkv.out_features // (3 * heads)
        views[f"{prefix}qkv.weight"] = (3, heads, head_dim, qkv.in_features)
        if qkv.bias is not None:
            views[f"{prefix}qkv.bias"] = (3, heads, head_dim)
        proj = getattr(module, "proj", None)
        if isinstance(proj, nn.Linear) and proj.in_features == heads * head_dim:
            views[f"{prefix}proj.weight"] = (proj.out_features, heads, head_dim)
    return views


def _chunk_view(shape: torch.Size, chunks: int) -> tuple[int, ...]:
    return (chunks, shape[0] // chunks, *shape[1:])


@dataclass
class WeightMap:
    """A deterministic map from base tensors to motivated tensors (see module docstring)."""

    entries: list[MapEntry]
    extra: list[str] = field(default_factory=list)
    aliased: set[str] = field(default_factory=set)  # base names whose data is a view of the motivated tensor

    @classmethod
    def infer(
        cls,
        base: nn.Module,
        motivated: nn.Module,
        overrides: dict[str, MapEntry] | None = None,
        fused: dict[str, int] | None = None,
    ) -> WeightMap:
        """Align two models of one family by name and shape.

        Every base tensor maps to the motivated tensor of the same name: whole if the shapes are
        equal (depth growth keeps the first blocks of each stage), else onto the leading slice of
        every dimension that grew (width growth). Attention projections are viewed per head first
        (see the module docstring). Other tensors whose name ends with a key of ``fused`` (default
        ``{"qkv.weight": 3, "qkv.bias": 3}``, for attention modules without ``num_heads``) are
        split into that many chunks on dimension 0 first. ``overrides`` maps base names to entries
        of the user's own, used as given.
        """
        _check_pair(base, motivated)
        overrides = overrides or {}
        fused = {"qkv.weight": 3, "qkv.bias": 3} if fused is None else fused
        target = _tensors(motivated)
        buffers = {name for name, _ in base.named_buffers()}
        base_heads, motivated_heads = _head_views(base), _head_views(motivated)
        entries = []
        for name, tensor in _tensors(base).items():
            if name in overrides:
                entries.append(overrides[name])
                continue
            if name not in target:
                raise ConfigError(
                    f"cannot map the base tensor {name!r} {tuple(tensor.shape)}: the motivated model "
                    "has no tensor of that name; is the motivated model a grown copy of the base? "
                    "(pass overrides= for tensors that moved)"
                )
            big = target[name]
            heads = (base_heads.get(name), motivated_heads.get(name))
            if tensor.shape == big.shape and heads[0] == heads[1]:
                entries.append(MapEntry(name, name, (), name in buffers))
                continue
            chunks = next((n for suffix, n in fused.items() if name.endswith(suffix)), 1)
            if heads[0] and heads[1]:
                base_view, motivated_view = heads
            elif chunks > 1 and tensor.shape[0] % chunks == 0 and big.shape[0] % chunks == 0:
                base_view, motivated_view = _chunk_view(tensor.shape, chunks), _chunk_view(big.shape, chunks)
            else:
                base_view, motivated_view = (), ()
            small, large = base_view or tuple(tensor.shape), motivated_view or tuple(big.shape)
            fits = len(small) == len(large) and all(b <= m for b, m in zip(small, large, strict=True))
            if not fits or (chunks > 1 and not base_view):
                raise ConfigError(
                    f"cannot map the base tensor {name!r}: shape {tuple(tensor.shape)} in the base, "
                    f"{tuple(big.shape)} in the motivated model (a base tensor must fit inside its "
                    "counterpart on every dimension, and attention heads inside heads)"
                )
            index = tuple(slice(0, n) for n in small)
            entries.append(MapEntry(name, name, index, name in buffers, base_view, motivated_view))
        mapped = {e.motivated for e in entries}
        return cls(entries, [name for name in target if name not in mapped])

    def parameters(self) -> Iterator[MapEntry]:
        return (e for e in self.entries if not e.buffer)

    def selected(self, buffers: bool) -> Iterator[MapEntry]:
        """All entries, or only the parameters' when mapped buffers are not to be synced."""
        return iter(self.entries) if buffers else self.parameters()

    @torch.no_grad()
    def copy(self, base: nn.Module, motivated: nn.Module, direction: Direction, buffers: bool) -> None:
        """Copy the shared weights (and the mapped buffers if ``buffers``) in one direction."""
        todo = [e for e in self.selected(buffers) if e.base not in self.aliased]
        if not todo:  # zero-copy sharing covers everything: skip even the name lookups
            return
        b, m = _tensors(base), _tensors(motivated)
        regions = [e.region(m[e.motivated]) for e in todo]
        sources = [e.source(b[e.base]) for e in todo]
        # one batched copy: per-tensor dispatch, not the bytes, dominates a switch of many small tensors
        if direction == "to_motivated":
            torch._foreach_copy_(regions, sources)
        else:
            torch._foreach_copy_(sources, regions)

    @torch.no_grad()
    def alias(self, base: nn.Module, motivated: nn.Module, buffers: bool) -> list[str]:
        """Zero-copy sharing: make each mapped base tensor a view of its region of the motivated
        tensor, so an update of either model is seen by the other with nothing copied.

        The base keeps its parameter objects (its optimizer stays valid); only their storage
        changes. Only regions that are contiguous are shared: a strided weight makes matrix
        multiplication sum in another order, so results would differ from copying at rounding level;
        such entries (width growth on an inner dimension, chunked ``qkv``) stay on copying. Call it
        after the models are on their device: ``Module.to`` makes new storage and ends the sharing.
        Returns the aliased base names.
        """
        self.copy(base, motivated, "to_motivated", buffers=buffers)
        b, m = _tensors(base), _tensors(motivated)
        for e in self.selected(buffers):
            region = e.region(m[e.motivated])
            if not region.is_contiguous() or region.shape != b[e.base].shape:
                continue
            b[e.base].data = region
            self.aliased.add(e.base)
        return sorted(self.aliased)

    def carry_optimizer_state(
        self,
        source: torch.optim.Optimizer,
        target: torch.optim.Optimizer,
        base: nn.Module,
        motivated: nn.Module,
        direction: Direction,
    ) -> None:
        """Copy the optimizer state of shared weights (momentum, Adam moments, step) along the map,
        so the state follows the weights like the weights follow the map."""
        b, m = dict(base.named_parameters()), dict(motivated.named_parameters())
        targets, sources = [], []
        for e in self.parameters():
            src_param, dst_param = (
                (b[e.base], m[e.motivated]) if direction == "to_motivated" else (m[e.motivated], b[e.base])
            )
            src_state = source.state.get(src_param)
            if not src_state:
                continue
            dst_state = target.state[dst_param]
            for key, value in src_state.items():
                if not torch.is_tensor(value) or value.shape != src_param.shape:
                    dst_state[key] = value.clone() if torch.is_tensor(value) else value
                    continue
                dst = dst_state.get(key)
                if dst is None or dst.shape != dst_param.shape:
                    dst = dst_state[key] = torch.zeros_like(dst_param)
                if direction == "to_motivated":
                    targets.append(e.region(dst))
                    sources.append(e.source(value))
                else:
                    targets.append(e.source(dst))
                    sources.append(e.region(value))
        if targets:
            with torch.no_grad():
                torch._foreach_copy_(targets, sources)

    def init_extra_capacity(self, motivated: nn.Module) -> list[str]:
        """Make every added residual block start as the identity, so that the motivated model
        computes the base's function. A block counts as added when none of its parameters is
        mapped; see :func:`make_identity` for the blocks it knows. Returns the names of the blocks
        it initialised."""
        mapped = {e.motivated for e in self.entries}
        done: list[str] = []
        for name, module in motivated.named_modules():
            if any(name.startswith(d + ".") for d in done):
                continue
            names = [f"{name}.{n}" for n, _ in module.named_parameters()]
            if names and not any(n in mapped for n in names) and make_identity(module):
                done.append(name)
        return done

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


@torch.no_grad()
def make_identity(block: nn.Module) -> bool:
    """Zero the last layer of a residual block's branch, so the block computes the identity.

    Knows blocks with a ``zero_init_last()`` method (this project's and timm's ResNet blocks; the
    shift of the BatchNorm it zeroes is zeroed too),
    pre-norm transformer blocks (``attn.proj`` and ``mlp.fc2`` are zeroed: timm's ViT blocks) and
    blocks with an active ``has_skip`` (timm's EfficientNet and MobileNet blocks: the last
    BatchNorm's scale and shift are zeroed). Returns False, changing nothing, for anything else.
    """
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if callable(getattr(block, "zero_init_last", None)):
        block.zero_init_last()
        for norm in norms:  # timm zeroes the scale only, which is the identity only while the shift is zero
            if not norm.weight.any():
                norm.bias.zero_()
        return True
    last_layers = [getattr(getattr(block, a, None), b, None) for a, b in (("attn", "proj"), ("mlp", "fc2"))]
    if all(isinstance(layer, nn.Linear) for layer in last_layers):
        for layer in last_layers:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
        return True
    if getattr(block, "has_skip", False) is True and norms:
        norms[-1].weight.zero_()
        norms[-1].bias.zero_()
        return True
    return False


def _check_pair(base: nn.Module, motivated: nn.Module) -> None:
    base_cfg, mot_cfg = getattr(base, "cfg", {}), getattr(motivated, "cfg", {})
    for key in ("num_classes", "in_channels"):
        if key in base_cfg and key in mot_cfg and base_cfg[key] != mot_cfg[key]:
            raise ConfigError(
                f"the two models disagree on {key}: base {base_cfg[key]}, motivated {mot_cfg[key]}; "
                "build both for the same data"
            )
    n_base = sum(p.numel() for p in base.parameters())
    n_mot = sum(p.numel() for p in motivated.parameters())
    if n_base >= n_mot:
        raise ConfigError(
            f"the base model ({n_base:,} parameters) must be smaller than the motivated model "
            f"({n_mot:,}); pass the small model as base and the large one as motivated"
        )
