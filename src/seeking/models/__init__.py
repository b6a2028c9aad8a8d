"""Model families and the name registry."""

from .cifar_resnet import BasicBlock, CifarResNet
from .registry import create_model, list_models, register_model

__all__ = ["BasicBlock", "CifarResNet", "create_model", "list_models", "register_model"]
