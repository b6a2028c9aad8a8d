"""The weights map: which base tensor lives where in the motivated model.

Each :class:`MapEntry` ties one base tensor (parameter or buffer, by state-dict name) to a region of
one motivated tensor. Depth growth maps whole tensors (``index == ()``); width growth maps a base
tensor onto the leading slice of every dimension that grew. A fused projection (attention ``qkv``:
query, key and value stacked on dimension 0) is split into its ``chunks`` first, so that each
part maps onto the leading part of its counterpart, not onto a naive leading slice of the whole.
Motivated tensors that no entry reaches are the *extra capacity*.
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
    chunks: int = 1

    def region(self, motivated_tensor: torch.Tensor) -> torch.Tensor:
        """The view of the motivated tensor that holds the base tensor (chunked like :meth:`source`)."""
        if self.chunks > 1:
            return motivated_tensor.unflatten(0, (self.chunks, -1))[(slice(None), *self.index)]
        return motivated_tensor[self.index] if self.index else motivated_tensor

    def source(self, base_tensor: torch.Tensor) -> torch.Tensor:
        """The base tensor shaped like :meth:`region` (a view)."""
        return base_tensor.unflatten(0, (self.chunks, -1)) if self.chunks > 1 else base_tensor


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # Looked up on every use, not cached: ``model.to(...)`` replaces buffer objects.
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _format_region(entry: MapEntry) -> str:
    if not entry.index:
        return "all"
    region = "[" + ", ".join(f":{s.stop}" for s in entry.index) + "]"
    return f"{region} of each of {entry.chunks} chunks" if entry.chunks > 1 else region


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
        every dimension that grew (width growth). Tensors whose name ends with a key of ``fused``
        (default ``{"qkv.weight": 3, "qkv.bias": 3}``) are split into that many chunks on dimension
        0 first. ``overrides`` maps base names to entries of the user's own, used as given.
        """
        _check_pair(base, motivated)
        overrides = overrides or {}
        fused = {"qkv.weight": 3, "qkv.bias": 3} if fused is None else fused
        target = _tensors(motivated)
        buffers = {name for name, _ in base.named_buffers()}
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
            if tensor.shape == big.shape:
                entries.append(MapEntry(name, name, (), name in buffers))
                continue
            chunks = next((n for suffix, n in fused.items() if name.endswith(suffix)), 1)
            grown = tensor.dim() == big.dim() and all(b <= m for b, m in zip(tensor.shape, big.shape, strict=True))
            if not grown or tensor.shape[0] % chunks or big.shape[0] % chunks:
                raise ConfigError(
                    f"cannot map the base tensor {name!r}: shape {tuple(tensor.shape)} in the base, "
                    f"{tuple(big.shape)} in the motivated model (a base tensor must fit inside its "
                    "counterpart on every dimension)"
                )
            index = tuple(slice(0, n) for n in (tensor.shape[0] // chunks, *tensor.shape[1:]))
            entries.append(MapEntry(name, name, index, name in buffers, chunks))
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
        for e in todo:
            if direction == "to_motivated":
                e.region(m[e.motivated]).copy_(e.source(b[e.base]))
            else:
                e.source(b[e.base]).copy_(e.region(m[e.motivated]))

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
                with torch.no_grad():
                    if direction == "to_motivated":
                        e.region(dst).copy_(e.source(value))
                    else:
                        e.source(dst).copy_(e.region(value))

    def init_extra_capacity(self, motivated: nn.Module) -> list[str]:
        """Make every added residual block start as the identity, so that the motivated model
        computes the base's function. A block counts as added when none of its parameters is
        mapped; it must offer ``zero_init_last()`` (the project's and timm's blocks do).
        Returns the names of the blocks it initialised."""
        mapped = {e.motivated for e in self.entries}
        done = []
        for name, module in motivated.named_modules():
            if not hasattr(module, "zero_init_last") or any(name == d or name.startswith(d + ".") for d in done):
                continue
            names = [f"{name}.{n}" for n, _ in module.named_parameters()]
            if names and not any(n in mapped for n in names):
                module.zero_init_last()
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
