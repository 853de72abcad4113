"""The trained built-in MNIST CNN with its test and calibration images, shared by network-level tests."""
from __future__ import annotations

import torch

from mcsim.data import calibration_images, load_split
from mcsim.models import load_model
from mcsim.specs import DataSpec, ModelSpec


def mnist_cnn(images: int, calibration: int):
    """``(model, xs, ys, cal)``: builtin:mnist-cnn, the first ``images`` mnist5k test images and their
    labels, and ``calibration`` training images."""
    model = load_model(ModelSpec(name="builtin:mnist-cnn"))
    test = load_split(DataSpec(name="mnist5k"), "test")
    xs = torch.stack([test[i][0] for i in range(images)])
    ys = torch.tensor([test[i][1] for i in range(images)])
    cal = calibration_images(DataSpec(name="mnist5k", calibration={"split": "train", "count": calibration}))
    return model, xs, ys, cal
