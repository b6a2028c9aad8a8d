"""Model files: a trained model as a safetensors file that needs nothing from the training run to load.

(Not a checkpoint: in seeking that is a training state for resuming, :mod:`seeking.training.checkpoint`.)

The file's metadata names the registered model and its constructor arguments, so
``load_model(path)`` rebuilds it with :func:`seeking.create_model`; a user can equally build the
model themselves and call ``model.load_state_dict(safetensors.torch.load_file(path))``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .errors import CheckpointError, SeekingError
from .io import atomic_write_bytes
from .models import create_model
from .runs import MODEL_FILES, is_training_state

FORMAT_VERSION = "1"


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    name: str,
    model_kwargs: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Save ``model``'s state dict with the metadata :func:`load_model` needs, atomically."""
    metadata = {
        "seeking.format": FORMAT_VERSION,
        "seeking.model": name,
        "seeking.model_kwargs": json.dumps(model_kwargs),
        "seeking.extra": json.dumps(extra or {}),
    }
    # A copy of each tensor: a base tensor may be a view into the motivated model (zero-copy sharing).
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def read_model_file(path: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """Return the state dict and the decoded metadata, or raise :class:`CheckpointError`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}")
    data = b""
    try:
        with open(path, "rb") as f:
            data = f.read()
        state = safetensors.torch.load(data)
        with safetensors.safe_open(path, "pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CheckpointError(_not_safetensors(path, data, exc)) from None
    if raw.get("seeking.format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not a seeking model checkpoint of format {FORMAT_VERSION} "
            f"(found format {raw.get('seeking.format')!r})"
        )
    meta = {
        "model": raw["seeking.model"],
        "model_kwargs": json.loads(raw["seeking.model_kwargs"]),
        "extra": json.loads(raw.get("seeking.extra", "{}")),
    }
    return state, meta


def _not_safetensors(path: str | os.PathLike, data: bytes, exc: Exception) -> str:
    """Why ``path`` is no model file: another kind of file seeking writes, or a damaged one."""
    if is_training_state(data):
        return (
            f"{path} is a training checkpoint (the state --resume continues from), not a model file: a run's "
            f"models are RUN_DIR/{MODEL_FILES['base']} and {MODEL_FILES['motivated']}, written when it finishes; "
            "finish an interrupted run with seeking train --resume RUN_DIR"
        )
    if data.startswith(b"PK\x03\x04"):  # torch.save's zip format
        return (
            f"{path} is a torch.save file, not a safetensors model file: load it with torch.load, or save "
            "the model with seeking.save_model"
        )
    return f"cannot read checkpoint {path}: {exc}; is it a complete safetensors file?"


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from; returns it (in eval mode) and the metadata."""
    state, meta = read_model_file(path)
    try:
        model = create_model(meta["model"], **meta["model_kwargs"])
        model.load_state_dict(state)
    except SeekingError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} does not fit model {meta['model']!r}: {exc}") from None
    return model.eval(), meta
