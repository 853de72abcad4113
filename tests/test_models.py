"""mcsim.models: schema, built-in training and cache, torchvision weights, factories."""
from __future__ import annotations

import dataclasses
import textwrap
import warnings

import pytest
import torch
import torchvision
from pydantic import ValidationError
from torch import nn

from mcsim import models as M
from mcsim.data import DataSpec, load_split
from mcsim.models import ModelError, ModelSpec, load_model

THRESHOLDS = {"digits-cnn": 0.95, "mnist-cnn": 0.95, "mnist-resnet": 0.95, "digits-vit": 0.95,
              "digits-transformer": 0.95, "mnist-lstm": 0.95}
DATASET = {"digits-cnn": "digits", "mnist-cnn": "mnist5k", "mnist-resnet": "mnist5k", "digits-vit": "digits",
           "digits-transformer": "digits", "mnist-lstm": "mnist5k", "diabetes-mlp": "diabetes", "text-lstm": "text"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Train every built-in once, into a private cache; yields {name: (metadata, mtime)}."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCSIM_CACHE_DIR", str(tmp_path_factory.mktemp("mcsim-cache")))
        info = {name: M.builtin_metadata(name) for name in M.BUILTINS}
        yield {name: (meta, M.builtin_path(name).stat().st_mtime_ns) for name, meta in info.items()}


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"),
    ({"name": "builtin:mnist-cnn", "factory": "a:b"}, "exactly one"),
    ({"name": "resnet50"}, "must start with"),
    ({"name": "builtin:lenet"}, "builtin:mnist-cnn, builtin:mnist-resnet"),
    ({"name": "torchvision:resnet9000"}, "resnet50"),
    ({"name": "torchvision:fasterrcnn_resnet50_fpn"}, "unknown torchvision classification model"),
    ({"name": "builtin:mnist-cnn", "weights": "x.pt"}, "model.weights"),
    ({"name": "torchvision:resnet18", "checkpoint": "x.pt"}, "model.checkpoint"),
    ({"factory": "nocolon"}, "model.factory"),
    ({"name": "builtin:mnist-cnn", "extra": 1}, "extra"),
])
def test_schema_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ModelSpec(**kwargs)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MCSIM_CACHE_DIR", str(tmp_path))
    assert M.cache_dir() == tmp_path
    monkeypatch.delenv("MCSIM_CACHE_DIR")
    assert M.cache_dir().name == "mcsim"


# ---------------------------------------------------------------- built-ins


@pytest.mark.slow  # trains every built-in
@pytest.mark.parametrize("name", list(THRESHOLDS))
def test_builtin_accuracy(trained, name):
    meta, _ = trained[name]
    print(f"{name}: test accuracy {meta['test_accuracy']:.4f}, trained in {meta['train_seconds']} s")
    assert meta["test_accuracy"] >= THRESHOLDS[name]
    model = load_model(ModelSpec(name=f"builtin:{name}"))
    test = load_split(DataSpec(name=DATASET[name]), "test")
    with torch.no_grad():
        accuracy = float((model(test.images).argmax(1) == torch.tensor(test.targets)).float().mean())
    assert accuracy == pytest.approx(meta["test_accuracy"], abs=1e-6)


#: The built-ins scored by a loss (docs/physics.md section 14): their test score and its bound.
LOSS_SCORES = {"diabetes-mlp": ("test_mse", 0.7), "text-lstm": ("test_perplexity", 7.0)}


@pytest.mark.slow  # trains every built-in
@pytest.mark.parametrize("name", list(LOSS_SCORES))
def test_builtin_loss_models(trained, name):
    """The regression MLP explains about half the diabetes target's variance (mse of the
    standardised target < 0.7; predicting the mean scores 1); the character LSTM is far better than
    uniform guessing over 96 characters."""
    meta, _ = trained[name]
    key, bound = LOSS_SCORES[name]
    print(f"{name}: {key} {meta[key]:.4f}, trained in {meta['train_seconds']} s")
    assert meta[key] < bound and meta["train_seconds"] < 60


@pytest.mark.slow  # trains every built-in
@pytest.mark.parametrize("name", list(M.BUILTINS))
def test_builtin_load_hits_cache(trained, monkeypatch, name):
    def no_training(name):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(M, "_train", no_training)
    a = load_model(ModelSpec(name=f"builtin:{name}"))
    b = load_model(ModelSpec(name=f"builtin:{name}"))
    assert M.builtin_path(name).stat().st_mtime_ns == trained[name][1]
    assert not a.training and all(not p.requires_grad for p in a.parameters())
    assert all(p.device.type == "cpu" for p in a.parameters())
    x = load_split(DataSpec(name=DATASET[name]), "test").images[:16]
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.slow  # trains every built-in
def test_mnist_resnet_structure(trained):
    model = load_model(ModelSpec(name="builtin:mnist-resnet"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    shortcuts = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert shortcuts and shortcuts[0].stride == (2, 2)
    assert isinstance(model.layer1.shortcut, nn.Identity)  # an identity residual add too


def test_recipe_change_changes_cache_file():
    recipe = M.BUILTINS["digits-cnn"]
    assert dataclasses.replace(recipe, epochs=recipe.epochs + 1).digest() != recipe.digest()
    assert recipe.digest() == M.BUILTINS["digits-cnn"].digest()


@pytest.mark.slow  # trains the digits CNN twice
def test_training_is_deterministic_and_scoped():
    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = M._train("digits-cnn")
    assert torch.equal(torch.rand(3), expected)  # global RNG untouched
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == flag
    b = M._train("digits-cnn")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_corrupt_cache_file_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("MCSIM_CACHE_DIR", str(tmp_path))
    path = M.builtin_path("digits-cnn")
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="retraining"):
        load_model(ModelSpec(name="builtin:digits-cnn"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.builtin_metadata("digits-cnn")["test_accuracy"] > 0.9
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


# ---------------------------------------------------------------- torchvision


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval().state_dict()


def _output(model):
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    with torch.no_grad():
        return model(x)


def _reference(state):
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(state)
    return _output(model.eval())


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_torchvision_weights_file_round_trip(tmp_path, resnet18_state, wrap):
    obj = {
        "plain": resnet18_state,
        "state_dict": {"state_dict": resnet18_state, "epoch": 3},
        "model": {"model": resnet18_state},
        "module_prefix": {f"module.{k}": v for k, v in resnet18_state.items()},
    }[wrap]
    torch.save(obj, tmp_path / "w.pth")
    model = load_model(ModelSpec(name="torchvision:resnet18", weights=str(tmp_path / "w.pth")))
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert torch.equal(_output(model), _reference(resnet18_state))


def test_torchvision_random_init_with_kwargs():
    model = load_model(ModelSpec(name="torchvision:resnet18", kwargs={"num_classes": 7}))
    assert _output(model).shape == (1, 7)


def test_torchvision_enum_weights_from_hub_cache(tmp_path, monkeypatch, resnet18_state):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    expected = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(ModelError, match=rf"model\.weights: .*resnet18-f37072fd\.pth.*{expected}"):
        load_model(ModelSpec(name="torchvision:resnet18", weights="IMAGENET1K_V1"))
    expected.parent.mkdir()
    torch.save(resnet18_state, expected)
    model = load_model(ModelSpec(name="torchvision:resnet18", weights="DEFAULT"))
    assert torch.equal(_output(model), _reference(resnet18_state))


def test_torchvision_weights_errors(tmp_path):
    with pytest.raises(ModelError, match=r"model\.weights: .*IMAGENET1K_V1"):
        load_model(ModelSpec(name="torchvision:resnet18", weights=str(tmp_path / "missing.pth")))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError, match=r"model\.weights: cannot read"):
        load_model(ModelSpec(name="torchvision:resnet18", weights=str(tmp_path / "junk.pth")))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelError, match=r"model\.weights: .*does not fit"):
        load_model(ModelSpec(name="torchvision:resnet18", weights=str(tmp_path / "wrong.pth")))


# ---------------------------------------------------------------- factory


@pytest.fixture
def model_module(tmp_path, monkeypatch):
    (tmp_path / "my_fake_models.py").write_text(textwrap.dedent("""
        from torch import nn

        def make(width=4):
            return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))

        def not_a_module():
            return "model"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_fake_models"


def test_factory_model(tmp_path, model_module):
    model = load_model(ModelSpec(factory=f"{model_module}:make", kwargs={"width": 5}))
    assert model[0].out_features == 5 and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    again = load_model(ModelSpec(factory=f"{model_module}:make", kwargs={"width": 5},
                                 checkpoint=str(tmp_path / "ckpt.pt")))
    x = torch.ones(1, 3)
    assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("spec, message", [
    ({"factory": "my_fake_models:not_a_module"}, r"model\.factory: .*not an nn\.Module"),
    ({"factory": "my_fake_models:missing"}, r"model\.factory: .*no attribute"),
    ({"factory": "no_such_module_xyz:make"}, r"model\.factory: cannot import"),
    ({"factory": "my_fake_models:make", "kwargs": {"depth": 2}}, r"model\.factory: .*failed"),
    ({"factory": "my_fake_models:make", "checkpoint": "/no/such.pt"}, r"model\.checkpoint: "),
])
def test_factory_model_errors(model_module, spec, message):
    with pytest.raises(ModelError, match=message):
        load_model(ModelSpec(**spec))
