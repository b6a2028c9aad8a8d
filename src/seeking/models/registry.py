"""Name -> constructor registry, in the manner of timm: ``create_model("resnet20", num_classes=10)``.

Every constructor takes the data's ``num_classes``, ``in_channels`` and ``image_size`` (height,
width) as keyword arguments, plus its own options. Names not registered here are looked up in timm
when it is installed (``pip install 'seeking[timm]'``): ``create_model("efficientnet_b0", ...)``
builds timm's model without pretrained weights, with ``in_channels`` passed as timm's
``in_chans`` and ``image_size`` as ``img_size`` for the models that take one (ViTs). The classifier
is rebuilt with ``reset_classifier`` (PyTorch's default initialisation): timm scales some heads'
initial weights by ``1/sqrt(num_classes)``, which for 10 classes makes SGD diverge.

A local model folder is a name too, for the kinds registered with :func:`register_model_folder`
(a transformers ``save_pretrained`` folder: ``create_model("path/to/folder", vocab_size=65,
block_size=128)`` loads it with its weights). :func:`model_recipe` gives the registered name and
arguments that rebuild such a model without its folder, which saved model files record.
"""

from __future__ import annotations

import importlib.util
import inspect
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, SeekingWarning

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


@dataclass(frozen=True)
class ModelFolder:
    """A kind of local model folder: ``marker``, the file every such folder holds; ``like``, the
    registered model whose arguments a folder's model takes (the data's, e.g. ``vocab_size``);
    ``load(path, **kwargs)``, the model with the folder's weights; ``recipe(model)``, the registered
    name and arguments that rebuild it (random init) without the folder."""

    marker: str
    like: str
    load: Callable[..., nn.Module]
    recipe: Callable[[nn.Module], tuple[str, dict[str, Any]]]


_FOLDERS: dict[str, ModelFolder] = {}


def register_model_folder(kind: str, folder: ModelFolder) -> None:
    """Accept local folders of ``kind`` (e.g. ``"transformers"``) wherever a model name is taken."""
    if kind in _FOLDERS:
        raise ValueError(f"model folder kind {kind!r} is registered twice")
    _FOLDERS[kind] = folder


def model_folder(name: str) -> ModelFolder | None:
    """The registered kind of local folder that ``name`` is, or ``None`` (not a folder, no kind's marker, or
    a model name: ``gpt_2l`` is the registered model even beside a folder of that name, ``./gpt_2l`` the folder)."""
    path = Path(name).expanduser()
    if not path.is_dir() or _is_name(name):
        return None
    return next((f for f in _FOLDERS.values() if (path / f.marker).is_file()), None)


def _is_name(name: str) -> bool:
    """Whether ``name`` is a registered model's or timm's name."""
    if name in _MODELS:
        return True
    timm = _timm()
    return timm is not None and timm.is_model(name)


def model_recipe(name: str, model: nn.Module, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name and constructor arguments that rebuild ``model``, built as ``create_model(name, **kwargs)``:
    themselves, or for a local folder the registered name and arguments of :attr:`ModelFolder.recipe`."""
    folder = model_folder(name)
    if folder is None:
        return name, kwargs
    rebuilt, extra = folder.recipe(model)
    return rebuilt, {**kwargs, **extra}


def list_models() -> list[str]:
    """This project's model names, sorted (timm's names are accepted too, see the module docstring)."""
    return sorted(_MODELS)


def _timm():
    return importlib.import_module("timm") if importlib.util.find_spec("timm") else None


def model_exists(name: str) -> bool:
    """Whether :func:`create_model` knows ``name`` (this project's registry, a local model folder, then timm's)."""
    if name in _MODELS or model_folder(name) is not None:
        return True
    timm = _timm()
    return timm is not None and timm.is_model(name)


def unknown_model_message(name: str, role: str = "") -> str:
    if Path(name).expanduser().exists() or "/" in name:  # meant as a folder
        markers = " or ".join(sorted({f.marker for f in _FOLDERS.values()}))
        return (
            f"{role + ' ' if role else ''}model {name!r} is not a local model folder (no {markers} in it): give a "
            "folder written by save_pretrained, or a model name (seeking models)"
        )
    timm_hint = (
        "or any timm model name"
        if _timm() is not None
        else "(timm's names work once timm is installed: pip install 'seeking[timm]')"
    )
    return f"unknown {role + ' ' if role else ''}model {name!r}; known models: {', '.join(list_models())} {timm_hint}"


def model_arguments(name: str) -> dict[str, inspect.Parameter] | None:
    """The keyword arguments a registered model's constructor takes, or ``None`` when unknown (timm's
    models, which forward theirs through several layers). A registered function that takes ``**kwargs``
    is followed to the class its return annotation names."""
    folder = model_folder(name)
    if folder is not None:
        return model_arguments(folder.like)
    fn = _MODELS.get(name)
    if fn is None:
        return None
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        try:
            cls = typing.get_type_hints(fn).get("return")
        except Exception:  # an annotation that does not resolve: the arguments stay unknown
            return None
        if not isinstance(cls, type):
            return None
        params = inspect.signature(cls).parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: p for k, p in params.items() if p.kind in named}


# the annotations of constructor arguments that a value can be checked against before the call
_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits an annotation such as ``"int"`` or ``"float | None"``; ``True`` when the
    annotation has a part that cannot be checked here (the constructor's own checks then decide)."""
    parts = [part.strip() for part in str(annotation).split("|")]
    if not all(part in _SIMPLE_TYPES or part == "None" for part in parts):
        return True
    if value is None:
        return "None" in parts
    scalar = not isinstance(value, bool)  # True is an int to Python, not to a configuration
    return any(isinstance(value, _SIMPLE_TYPES[p]) and (scalar or p == "bool") for p in parts if p != "None")


def _check_arguments(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse an argument the constructor of ``name`` does not take or needs and is not given, or a value
    of the wrong type."""
    accepted = model_arguments(name)
    if accepted is None:
        return
    missing = [k for k, p in accepted.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ConfigError(
            f"model {name!r} needs the argument(s) {', '.join(map(repr, missing))}: give them in model_kwargs"
        )
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {name!r} takes no argument {', '.join(map(repr, unknown))} (given in model_kwargs?); "
            f"it takes: {', '.join(accepted)}"
        )
    for key, value in kwargs.items():
        annotation = accepted[key].annotation
        if annotation is not inspect.Parameter.empty and not _fits(value, annotation):
            raise ConfigError(
                f"model {name!r}: argument {key!r} must be of type {annotation}, got {value!r} ({type(value).__name__})"
            )


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name; keyword arguments go to its constructor.

    Raises ``ConfigError`` for an unknown name, an argument the constructor does not take (naming
    the ones it does), a value of the wrong type, or any ``TypeError``/``ValueError`` the constructor
    raises on the arguments given."""
    if not model_exists(name):
        raise ConfigError(unknown_model_message(name))
    if _is_name(name) and Path(name).is_dir() and any((Path(name) / f.marker).is_file() for f in _FOLDERS.values()):
        warnings.warn(
            f"{name!r} is a model name and also a model folder here: the named model is built; write "
            f"./{name} for the folder",
            SeekingWarning,
            stacklevel=2,
        )
    folder = model_folder(name)
    if folder is not None:
        takes = list(inspect.signature(folder.load).parameters)[1:]
        unknown = sorted(set(kwargs) - set(takes))
        if unknown:
            raise ConfigError(
                f"model folder {name!r} takes no argument {', '.join(map(repr, unknown))} (given in model_kwargs?): "
                f"its {folder.marker} sets the model"
            )
        return folder.load(name, **kwargs)
    if name not in _MODELS:
        return _create_timm(name, **kwargs)
    _check_arguments(name, kwargs)
    try:
        return _MODELS[name](**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. a value the constructor computes with and cannot use
        raise ConfigError(f"cannot build model {name!r} with {kwargs}: {exc}") from None


def _create_timm(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: tuple[int, int] | list[int] | None = None,
    **kwargs,
) -> nn.Module:
    timm = _timm()
    kwargs = {"num_classes": num_classes, "in_chans": in_channels, **kwargs}
    attempts = [{"img_size": tuple(image_size)}, {}] if image_size is not None else [{}]
    for size in attempts:
        try:
            model = timm.create_model(name, pretrained=False, **size, **kwargs)
            break
        except (TypeError, ValueError, AssertionError) as exc:  # timm asserts on some arguments
            if size and "img_size" in str(exc):  # a convolutional network: any input size, no img_size argument
                continue
            raise ConfigError(f"cannot build timm model {name!r} with {kwargs}: {exc}") from None
    # timm initialises some classifiers (EfficientNet's) uniformly within 1/sqrt(num_classes): with 10
    # classes the first logits reach +-30 and SGD diverges. A fresh head has PyTorch's default init.
    model.reset_classifier(num_classes)
    # The same metadata as this project's models carry, so pairs are checked alike.
    model.cfg = {"family": "timm", "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    return model
