"""The weights map: which base tensor lives where in the motivated model.

Each :class:`MapEntry` ties one base tensor (parameter or buffer, by state-dict name) to a region of
one motivated tensor. Depth growth maps whole tensors (``index == ()``); the region is a tuple of
slices so that width growth can map a base tensor onto the leading part of a wider one. Motivated
tensors that no entry reaches are the *extra capacity*.
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

    def region(self, motivated_tensor: torch.Tensor) -> torch.Tensor:
        return motivated_tensor[self.index] if self.index else motivated_tensor


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # Looked up on every use, not cached: ``model.to(...)`` replaces buffer objects.
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _format_index(index: tuple[slice, ...]) -> str:
    if not index:
        return "all"
    return "[" + ", ".join(f"{s.start or ''}:{s.stop}" for s in index) + "]"


@dataclass
class WeightMap:
    """A deterministic map from base tensors to motivated tensors (see module docstring)."""

    entries: list[MapEntry]
    extra: list[str] = field(default_factory=list)

    @classmethod
    def infer(cls, base: nn.Module, motivated: nn.Module) -> WeightMap:
        """Align two models of one family by name: every base tensor must exist in the motivated
        model under the same name and shape (depth growth: the first blocks of each stage)."""
        _check_pair(base, motivated)
        target = _tensors(motivated)
        buffers = {name for name, _ in base.named_buffers()}
        entries = []
        for name, tensor in _tensors(base).items():
            if name not in target:
                raise ConfigError(
                    f"cannot map the base tensor {name!r} {tuple(tensor.shape)}: the motivated model "
                    "has no tensor of that name; is the motivated model a grown copy of the base?"
                )
            if target[name].shape != tensor.shape:
                raise ConfigError(
                    f"cannot map the base tensor {name!r}: shape {tuple(tensor.shape)} in the base, "
                    f"{tuple(target[name].shape)} in the motivated model"
                )
            entries.append(MapEntry(name, name, (), name in buffers))
        mapped = {e.motivated for e in entries}
        return cls(entries, [name for name in target if name not in mapped])

    def parameters(self) -> Iterator[MapEntry]:
        return (e for e in self.entries if not e.buffer)

    @torch.no_grad()
    def copy(self, base: nn.Module, motivated: nn.Module, direction: Direction, buffers: bool) -> None:
        """Copy the shared weights (and the mapped buffers if ``buffers``) in one direction."""
        b, m = _tensors(base), _tensors(motivated)
        for e in self.entries:
            if e.buffer and not buffers:
                continue
            if direction == "to_motivated":
                e.region(m[e.motivated]).copy_(b[e.base])
            else:
                b[e.base].copy_(e.region(m[e.motivated]))

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
                        e.region(dst).copy_(value)
                    else:
                        dst.copy_(e.region(value))

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

    def shared_parameter_count(self, base: nn.Module) -> int:
        params = dict(base.named_parameters())
        return sum(params[e.base].numel() for e in self.parameters())

    def __len__(self) -> int:
        return len(self.entries)

    def __str__(self) -> str:
        rows = [("base tensor", "motivated tensor", "region", "kind")]
        rows += [
            (e.base, e.motivated, _format_index(e.index), "buffer" if e.buffer else "parameter") for e in self.entries
        ]
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
