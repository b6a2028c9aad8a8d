"""Name -> constructor registry, in the manner of timm: ``create_model("resnet20", num_classes=10)``.

Every constructor takes the data's ``num_classes``, ``in_channels`` and ``image_size`` (height,
width) as keyword arguments, plus its own options. Names not registered here are looked up in timm
when it is installed (``pip install 'seeking[timm]'``): ``create_model("efficientnet_b0", ...)``
builds timm's model without pretrained weights, with ``in_channels`` passed as timm's
``in_chans`` and ``image_size`` as ``img_size`` for the models that take one (ViTs). The classifier
is rebuilt with ``reset_classifier`` (PyTorch's default initialisation): timm scales some heads'
initial weights by ``1/sqrt(num_classes)``, which for 10 classes makes SGD diverge.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """This project's model names, sorted (timm's names are accepted too, see the module docstring)."""
    return sorted(_MODELS)


def _timm():
    return importlib.import_module("timm") if importlib.util.find_spec("timm") else None


def model_exists(name: str) -> bool:
    """Whether :func:`create_model` knows ``name`` (this project's registry, then timm's)."""
    if name in _MODELS:
        return True
    timm = _timm()
    return timm is not None and timm.is_model(name)


def unknown_model_message(name: str, role: str = "") -> str:
    timm_hint = (
        "or any timm model name"
        if _timm() is not None
        else "(timm's names work once timm is installed: pip install 'seeking[timm]')"
    )
    return f"unknown {role + ' ' if role else ''}model {name!r}; known models: {', '.join(list_models())} {timm_hint}"


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name; keyword arguments go to its constructor."""
    if name in _MODELS:
        return _MODELS[name](**kwargs)
    if not model_exists(name):
        raise ConfigError(unknown_model_message(name))
    return _create_timm(name, **kwargs)


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
        except TypeError as exc:
            if size and "img_size" in str(exc):  # a convolutional network: any input size, no img_size argument
                continue
            raise ConfigError(f"cannot build timm model {name!r} with {kwargs}: {exc}") from None
    # timm initialises some classifiers (EfficientNet's) uniformly within 1/sqrt(num_classes): with 10
    # classes the first logits reach +-30 and SGD diverges. A fresh head has PyTorch's default init.
    model.reset_classifier(num_classes)
    # The same metadata as this project's models carry, so pairs are checked alike.
    model.cfg = {"family": "timm", "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    return model
