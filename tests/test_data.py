"""mcsim.data: schema, built-in splits, subsets, image folders, factories."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from mcsim import data as D
from mcsim.data import DataError, DataSpec

SIZES = {"digits": (1797, 8), "mnist5k": (5000, 28)}


# ---------------------------------------------------------------- schema


def test_schema_defaults_and_forbid_extra():
    spec = DataSpec(name="digits")
    assert (spec.split, spec.limit, spec.batch_size) == ("test", None, 100)
    assert (spec.calibration.split, spec.calibration.count) == ("train", 500)
    with pytest.raises(ValidationError, match="bogus"):
        DataSpec(name="digits", bogus=1)
    with pytest.raises(ValidationError, match="count"):
        DataSpec(name="digits", calibration={"count": 0})


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "digits", "limit": 0}, "limit"),
    ({"name": "digits", "batch_size": 0}, "batch_size"),
    ({"name": "imagenet"}, "data.root"),
    ({"name": "imagefolder"}, "data.root"),
    ({"name": "factory"}, "data.factory"),
    ({"name": "factory", "factory": "no_colon"}, "data.factory"),
    ({"name": "digits", "factory": "a:b"}, "data.factory"),
    ({"name": "digits", "split": "val"}, "data.split"),
    ({"name": "mnist5k", "calibration": {"split": "val"}}, "data.calibration.split"),
    ({"name": "imagenet", "root": "/x", "split": "test"}, "data.split"),
])
def test_schema_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        DataSpec(**kwargs)


# ---------------------------------------------------------------- built-in sets


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_builtin_splits(name):
    total, side = SIZES[name]
    spec = DataSpec(name=name)
    train, test = D.load_split(spec, "train"), D.load_split(spec, "test")
    assert len(train) + len(test) == total
    assert abs(len(test) / total - 0.2) < 0.01
    image, label = test[0]
    assert image.shape == (1, side, side) and image.dtype == torch.float32 and isinstance(label, int)
    # stratified: every class keeps its share
    counts = np.bincount(test.targets, minlength=10)
    assert counts.min() >= counts.max() - 2
    # normalised with the hard-coded constants: [0, 1] maps to [-mean/std, (1-mean)/std]
    mean, std = D.NORMALIZATION[name]
    assert float(train.images.min()) == pytest.approx(-mean / std, abs=1e-5)
    assert float(train.images.max()) == pytest.approx((1 - mean) / std, abs=1e-5)
    # deterministic
    again = D.load_split(spec, "test")
    assert torch.equal(again.images, test.images) and again.targets == test.targets


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_builtin_train_test_disjoint(name):
    labels = D._builtin_arrays(name)[1]
    train, test = D._stratified_split(labels)
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(labels)


def test_unknown_split_at_load_time():
    with pytest.raises(DataError, match=r"data\.split"):
        D.load_split(DataSpec(name="digits"), "validation")


def test_stable_permutation_is_fixed():
    # the same on every machine and numpy version: pin a few values
    assert D.stable_permutation(10, 1).tolist() == [3, 5, 7, 4, 1, 2, 8, 9, 6, 0]
    perm = D.stable_permutation(1000, 7)
    assert sorted(perm.tolist()) == list(range(1000))


# ---------------------------------------------------------------- evaluation and calibration subsets


def test_evaluation_indices():
    n = 1000
    assert D.evaluation_indices(DataSpec(name="digits"), n).tolist() == list(range(n))
    spec = DataSpec(name="digits", limit=100)
    idx = D.evaluation_indices(spec, n)
    assert idx.dtype == np.int64 and len(idx) == 100 and len(set(idx)) == 100
    assert (np.diff(idx) > 0).all()
    assert np.array_equal(idx, D.evaluation_indices(spec, n))
    assert idx.tolist() != list(range(100))
    # class-sorted data (like ImageNet val): the subset still covers every class
    labels = np.repeat(np.arange(10), 100)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.min() >= 3 and counts.max() <= 20
    with pytest.raises(DataError, match=r"data\.limit"):
        D.evaluation_indices(DataSpec(name="digits", limit=1001), n)


def test_calibration_disjoint_from_evaluation_on_same_split():
    spec = DataSpec(name="mnist5k", split="test", limit=300, calibration={"split": "test", "count": 500})
    evaluated = set(D.evaluation_indices(spec, 1000))
    calib = D.calibration_indices(spec, 1000)
    assert len(calib) == 500 and not evaluated & set(calib)
    assert np.array_equal(calib, D.calibration_indices(spec, 1000))
    # not enough images left: overlap is unavoidable, but all free images are used first
    spec = DataSpec(name="mnist5k", limit=800, calibration={"split": "test", "count": 300})
    calib = set(D.calibration_indices(spec, 1000))
    free = set(range(1000)) - set(D.evaluation_indices(spec, 1000))
    assert free <= calib and len(calib) == 300


def test_calibration_images():
    spec = DataSpec(name="digits", calibration={"count": 64})
    images = D.calibration_images(spec)
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert torch.equal(images, D.calibration_images(spec))
    train = D.load_split(spec, "train")
    idx = D.calibration_indices(spec, len(train))
    assert torch.equal(images, train.images[torch.from_numpy(idx)])
    with pytest.raises(DataError, match=r"data\.calibration\.count"):
        D.calibration_images(DataSpec(name="digits", calibration={"count": 5000}))


def test_evaluation_dataset():
    ds = D.evaluation_dataset(DataSpec(name="digits", limit=50))
    assert len(ds) == 50 and ds[0][0].shape == (1, 8, 8)


# ---------------------------------------------------------------- image folders


def _image_tree(root, split="train", classes=("cat", "dog", "emu"), per_class=4):
    rng = np.random.default_rng(0)
    for c in classes:
        folder = root / split / c
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(260 + 10 * i, 300, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_imagefolder(tmp_path):
    root = _image_tree(tmp_path)
    ds = D.load_split(DataSpec(name="imagefolder", root=str(root), split="train"), "train")
    assert len(ds) == 12 and ds.classes == ["cat", "dog", "emu"]
    assert ds.targets == [0] * 4 + [1] * 4 + [2] * 4
    image, label = ds[5]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 1
    small = D.load_split(DataSpec(name="imagefolder", root=str(root / "train"), split=".",
                                  image_size=32, resize=40), ".")
    assert small[0][0].shape == (3, 32, 32) and len(small) == 12


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match=r"data\.root: .* is not a directory"):
        D.load_split(DataSpec(name="imagefolder", root=str(tmp_path / "missing")), "test")
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match=r"data\.root: no images"):
        D.load_split(DataSpec(name="imagefolder", root=str(tmp_path)), "test")
    (tmp_path / "test" / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"data\.root: no images"):
        D.load_split(DataSpec(name="imagefolder", root=str(tmp_path)), "test")
    with pytest.raises(DataError, match=r"data\.split: 'val' is not a subfolder.*test"):
        D.load_split(DataSpec(name="imagefolder", root=str(tmp_path), split="val"), "val")


def test_imagenet_falls_back_to_imagefolder(tmp_path):
    root = _image_tree(tmp_path, split="val", classes=("n01440764", "n01443537"), per_class=2)
    spec = DataSpec(name="imagenet", root=str(root), split="val", calibration={"split": "val", "count": 2})
    ds = D.load_split(spec, "val")
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1] and ds[0][0].shape == (3, 224, 224)
    assert D.calibration_images(spec).shape == (2, 3, 224, 224)
    with pytest.raises(DataError, match=r"data\.split"):
        D.load_split(spec, "train")
    (root / "meta.bin").write_bytes(b"junk")  # a devkit is present: torchvision's ImageNet is used
    with pytest.raises(DataError, match=r"data\.root: cannot open ImageNet"):
        D.load_split(spec, "val")


# ---------------------------------------------------------------- factory


@pytest.fixture
def data_module(tmp_path, monkeypatch):
    (tmp_path / "my_fake_data.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset

        def make(split, n=6, fail=False):
            if fail:
                raise RuntimeError("boom")
            x = torch.full((n, 3, 4, 4), 1.0 if split == "train" else 2.0)
            return TensorDataset(x, torch.arange(n))

        def not_a_dataset(split):
            return 42

        VALUE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_fake_data"


def test_factory_data(data_module):
    spec = DataSpec(name="factory", factory=f"{data_module}:make", kwargs={"n": 9},
                    calibration={"split": "train", "count": 3})
    ds = D.load_split(spec, "test")
    assert len(ds) == 9 and float(ds[0][0].max()) == 2.0
    calib = D.calibration_images(spec)
    assert calib.shape == (3, 3, 4, 4) and float(calib.max()) == 1.0


@pytest.mark.parametrize("ref, kwargs, message", [
    ("no_such_module_xyz:make", {}, "cannot import module"),
    ("my_fake_data:missing", {}, "no attribute"),
    ("my_fake_data:VALUE", {}, "not callable"),
    ("my_fake_data:not_a_dataset", {}, "not a Dataset"),
    ("my_fake_data:make", {"fail": True}, "boom"),
])
def test_factory_data_errors(data_module, ref, kwargs, message):
    spec = DataSpec(name="factory", factory=ref, kwargs=kwargs)
    with pytest.raises(DataError, match=rf"data\.factory: .*{message}"):
        D.load_split(spec, "test")
