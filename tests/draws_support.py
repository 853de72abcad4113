"""Layers for the per-chip draw tests: a real ResNet18 conv and a ViT projection (random weights)."""
import functools

import torch
import torchvision
from torch import nn

from mcsim import Hardware
from mcsim.engine import rng
from mcsim.engine.layers import AnalogLayer, Context
from mcsim.models import randomized


@functools.lru_cache(maxsize=None)
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return randomized(torchvision.models.resnet18(num_classes=10))


@functools.lru_cache(maxsize=None)
def vit() -> nn.Module:
    torch.manual_seed(0)
    return randomized(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                           hidden_dim=64, mlp_dim=128, num_classes=10))


LAYERS = {
    "resnet18.layer1.0.conv1": lambda: resnet18().layer1[0].conv1,
    "vit.encoder.layers.encoder_layer_0.mlp.0": lambda: vit().encoder.layers[0].mlp[0],
}


def analog_layer(name: str, hw: Hardware, chips, seed: int = 7) -> AnalogLayer:
    ctx = Context(seed=seed, chips=torch.as_tensor(chips, dtype=torch.int64))
    return AnalogLayer(LAYERS[name](), hw, name, ctx)


def targets(layer: AnalogLayer) -> dict:
    return {k: getattr(layer, f"target_{k}") for k in layer.kinds}


def draw(layer: AnalogLayer, error_free: bool = False, chips=None, hw=None):
    from mcsim.engine.draws import program_devices

    chips = layer.ctx.chips if chips is None else torch.as_tensor(chips, dtype=torch.int64)
    return program_devices(hw or layer.hw, targets(layer), layer.ctx.seed, chips, rng.name_key(layer.name),
                           layer.part, error_free)
