"""The workload sections of a scenario, ``model:`` and ``data:``, as torch-free pydantic specs.

The loaders live in :mod:`mcsim.models` and :mod:`mcsim.data` (which re-export these classes);
the specs are here so that reading and validating a scenario never imports torch. The only
check that needs a heavy import is the name of a ``torchvision:`` model, which imports
torchvision when (and only when) such a name is validated.
"""
from __future__ import annotations

import functools
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BUILTIN_MODELS", "CalibrationSpec", "DataSpec", "ModelSpec", "SPLITS", "split_ref", "check_split"]

#: Names of the built-in models (``builtin:<name>``); mcsim.models holds their recipes.
BUILTIN_MODELS = ("digits-cnn", "mnist-cnn", "mnist-resnet", "digits-vit", "digits-transformer", "mnist-lstm",
                  "diabetes-mlp", "text-lstm")

#: Splits of the data sets that have fixed ones.
SPLITS = {"digits": ("train", "test"), "mnist5k": ("train", "test"), "imagenet": ("val", "train"),
          "diabetes": ("train", "test"), "text": ("train", "test")}


# ---------------------------------------------------------------- helpers


def split_ref(ref: str, field: str, error: type[Exception]) -> tuple[str, str]:
    """``'package.module:function'`` -> (module, attribute); malformed refs raise ``error`` naming ``field``."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise error(f"{field}: {ref!r} is not of the form 'package.module:function'")
    return module_name, attr


def check_split(name: str, split: str, field: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``field`` when ``split`` is not a split of data set ``name``."""
    if split not in SPLITS[name]:
        raise error(f"{field}: {split!r} is not a split of {name} ({' or '.join(SPLITS[name])})")


@functools.lru_cache(maxsize=1)
def classification_archs() -> list[str]:
    """torchvision's classification architectures (imports torchvision, hence torch)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


# ---------------------------------------------------------------- model:


class ModelSpec(BaseModel):
    """The ``model:`` section of a scenario: exactly one of ``name`` or ``factory``."""

    model_config = ConfigDict(extra="forbid")

    name: Optional[str] = Field(None, description="'builtin:<name>' or 'torchvision:<arch>'")
    weights: Optional[str] = Field(None, description="torchvision: weight-enum name or file; null = random init")
    factory: Optional[str] = Field(None, description="'package.module:function' returning an nn.Module")
    checkpoint: Optional[str] = Field(None, description="factory: state_dict file loaded into the module")
    kwargs: dict = Field(default_factory=dict, description="keyword arguments of the factory / torchvision builder")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.name is None) == (self.factory is None):
            raise ValueError("model.name/model.factory: give exactly one of them")
        if self.factory is not None:
            module_name, _, function = self.factory.partition(":")
            if not module_name or not function:
                raise ValueError(f"model.factory: {self.factory!r} is not of the form 'package.module:function'")
            if self.weights is not None:
                raise ValueError("model.weights: not used with model.factory (use model.checkpoint)")
            return self
        kind, _, arch = self.name.partition(":")
        if kind == "builtin":
            if arch not in BUILTIN_MODELS:
                raise ValueError(f"model.name: unknown built-in model {arch!r}; valid: "
                                 + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS))
            if self.weights is not None or self.kwargs:
                raise ValueError("model.weights/model.kwargs: not used with built-in models")
        elif kind == "torchvision":
            if arch not in classification_archs():
                raise ValueError(f"model.name: unknown torchvision classification model {arch!r}; valid: "
                                 + ", ".join(classification_archs()))
        else:
            raise ValueError(f"model.name: {self.name!r} must start with 'builtin:' or 'torchvision:'")
        if self.checkpoint is not None:
            raise ValueError("model.checkpoint: only used with model.factory (torchvision: use model.weights)")
        return self


# ---------------------------------------------------------------- data:


class CalibrationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "train"
    count: int = Field(500, ge=1, description="number of calibration images")


class DataSpec(BaseModel):
    """The ``data:`` section of a scenario."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["digits", "mnist5k", "imagenet", "imagefolder", "factory", "diabetes", "text"]
    root: Optional[str] = Field(None, description="dataset directory (imagenet, imagefolder)")
    split: str = Field("test", description="digits/mnist5k/diabetes/text: train|test; imagenet: val|train; "
                       "imagefolder: a subfolder of root, or '.' for root itself")
    limit: Optional[int] = Field(None, ge=1, description="evaluate on this many images (fixed random subset)")
    batch_size: int = Field(100, ge=1)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    factory: Optional[str] = Field(None, description="'package.module:function' returning a torch Dataset")
    kwargs: dict = Field(default_factory=dict, description="extra keyword arguments of the factory")
    image_size: int = Field(224, ge=1, description="center-crop size (imagenet, imagefolder)")
    resize: int = Field(256, ge=1, description="resize of the shorter side (imagenet, imagefolder)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.name in ("imagenet", "imagefolder") and not self.root:
            raise ValueError(f"data.root: required when data.name is {self.name!r}")
        if self.name == "factory":
            if not self.factory:
                raise ValueError("data.factory: required when data.name is 'factory'")
            split_ref(self.factory, "data.factory", ValueError)
        elif self.factory is not None or self.kwargs:
            raise ValueError("data.factory/data.kwargs: only used with data.name 'factory'")
        if self.name in SPLITS:
            check_split(self.name, self.split, "data.split", ValueError)
            check_split(self.name, self.calibration.split, "data.calibration.split", ValueError)
        if self.resize < self.image_size:
            raise ValueError(f"data.resize: {self.resize} is smaller than data.image_size {self.image_size}")
        return self
