"""Model families and the name registry."""

from .cifar_resnet import BasicBlock, CifarResNet
from .gpt import GPT
from .gpt_moe import GPTMoE, lm_loss
from .hf import HFCausalLM
from .micro_moe import MicroMoE, TopKLinear
from .registry import create_model, list_models, register_model
from .vit_moe import ViTMoE

__all__ = [
    "GPT",
    "BasicBlock",
    "CifarResNet",
    "GPTMoE",
    "HFCausalLM",
    "MicroMoE",
    "TopKLinear",
    "ViTMoE",
    "create_model",
    "list_models",
    "lm_loss",
    "register_model",
]
