"""Workload models: :func:`load_model` and the built-in recipes (the `model:` schema is in mcsim.specs).

Three kinds of model:

* ``builtin:<name>``: small networks trained on first use on the built-in data sets
  (see :data:`BUILTINS`) and cached in :func:`cache_dir`; training is deterministic.
* ``torchvision:<arch>``: a torchvision classification model. ``weights`` is a weight-enum name
  (``IMAGENET1K_V1``, ``DEFAULT``, ...) whose file must already be in the torch hub cache,
  a path to a state_dict / checkpoint file, or null for random initialisation.
* ``factory: package.module:function``: any ``nn.Module``, with an optional ``checkpoint``.

Nothing is ever downloaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import platformdirs
import torch
import torchvision
from torch import nn

from .data import DataSpec, import_object, load_split
from .errors import InputError
from .specs import BUILTIN_MODELS, ModelSpec  # noqa: F401  (ModelSpec re-exported)

RECIPE_VERSION = 1  # bump when training code changes in a way the recipe fields do not show


class ModelError(InputError, ValueError):
    """A model problem; the message starts with the offending field (``model.weights: ...``)."""

    in_scenario = True


# ---------------------------------------------------------------- built-in architectures


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, residual add, ReLU; 1x1 conv+BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class MnistResNet(nn.Module):
    """1x28x28 -> stem (conv-BN-ReLU, pool to 14x14) -> block 16 -> stride-2 block 32 -> avgpool -> linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def mnist_cnn() -> nn.Module:
    """1x28x28: (conv5x5-ReLU-maxpool) x2 -> linear."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def digits_cnn() -> nn.Module:
    """1x8x8: (conv3x3-ReLU-maxpool) x2 -> linear."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MHA(LN(x)), then x + MLP(LN(x)) (as torchvision's ViT)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TinyViT(nn.Module):
    """A small vision transformer: patch embedding (a strided conv) + learned position embedding ->
    ``depth`` encoder blocks (nn.MultiheadAttention, LayerNorm, GELU MLP) -> LayerNorm -> mean over
    tokens -> linear. On arrays: the patch conv, every attention projection, the MLPs and the head."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, mlp: int, num_classes: int = 10,
                 overlap: int = 0):
        super().__init__()
        # overlap > 0: each patch sees `overlap` pixels of its neighbours on every side (a conv stem)
        self.patch = nn.Conv2d(1, dim, patch + 2 * overlap, patch, padding=overlap)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, tokens, dim)
        return self.head(self.ln(self.blocks(x)).mean(1))


def mnist_vit() -> nn.Module:
    """1x28x28: 7x7 patches (16 tokens), width 64, 3 blocks of 4 heads, MLP 128."""
    return TinyViT(image=28, patch=7, dim=64, depth=3, heads=4, mlp=128)


def digits_vit() -> nn.Module:
    """1x8x8: 2x2 patches seen through 4x4 windows (16 tokens), width 48, 2 blocks of 4 heads, MLP 96."""
    return TinyViT(image=8, patch=2, dim=48, depth=2, heads=4, mlp=96, overlap=1)


class RowLSTM(nn.Module):
    """1x28x28: the image's 28 rows as a sequence of 28 steps -> LSTM (hidden 64) -> its last hidden
    state -> linear. On arrays: the LSTM's input-hidden and hidden-hidden matrices and the head."""

    def __init__(self, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(28, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x.flatten(1, 2))  # (B, 1, 28, 28) -> rows (B, 28 steps, 28)
        return self.head(y[:, -1])


def diabetes_mlp() -> nn.Module:
    """10 standardised features -> 64 -> 64 -> 1 (ReLU): a regression MLP, scored by ``metric: mse``."""
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


class CharLSTM(nn.Module):
    """A character-level language model: token ids (B, T) -> embedding 32 -> one LSTM layer of 128
    -> linear head -> next-character logits (B, T, vocab); scored by ``metric: perplexity``. On
    arrays: the LSTM's matrices and the head."""

    def __init__(self, vocab: int = 96, embed: int = 32, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(x))[0])


class RowTransformer(nn.Module):
    """Reads an image's rows as a sequence: each row's pixels embedded by a Linear, plus a learned
    position embedding -> ``nn.TransformerEncoder`` (torch's own layers: pre-norm, ReLU feed-forward)
    -> mean over rows -> linear. On arrays: the embedding, every attention projection, the
    feed-forward Linears and the head (mcsim.engine.transformer)."""

    def __init__(self, rows: int, cols: int, dim: int, depth: int, heads: int, ff: int, num_classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(cols, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, rows, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(1, 2)) + self.pos  # (B, 1, rows, cols) -> (B, rows, dim)
        return self.head(self.encoder(h).mean(1))


def digits_transformer() -> nn.Module:
    """1x8x8 read as 8 rows of 8 pixels: width 32, 2 layers of 4 heads, feed-forward 64."""
    return RowTransformer(rows=8, cols=8, dim=32, depth=2, heads=4, ff=64)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a built-in model is made; any change of it (or of the architecture) retrains."""

    build: Callable[[], nn.Module]
    dataset: str
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0

    def digest(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "build"}
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: keep the global RNG
            architecture = repr(self.build())
        text = f"v{RECIPE_VERSION}|{sorted(fields.items())}|{architecture}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


BUILTINS: dict[str, Recipe] = {
    "digits-cnn": Recipe(digits_cnn, "digits", epochs=30, lr=3e-3),
    "mnist-cnn": Recipe(mnist_cnn, "mnist5k", epochs=8, lr=2e-3),
    "mnist-resnet": Recipe(MnistResNet, "mnist5k", epochs=10, lr=5e-3, weight_decay=1e-4),
    "digits-vit": Recipe(digits_vit, "digits", epochs=40, lr=3e-3, weight_decay=1e-4),
    "digits-transformer": Recipe(digits_transformer, "digits", epochs=40, lr=3e-3, weight_decay=1e-4),
    "mnist-lstm": Recipe(RowLSTM, "mnist5k", epochs=15, lr=5e-3),
    "diabetes-mlp": Recipe(diabetes_mlp, "diabetes", epochs=60, lr=3e-3, batch_size=32, weight_decay=1e-3),
    "text-lstm": Recipe(CharLSTM, "text", epochs=12, lr=1e-2, batch_size=32),
}
#: What a built-in model trained on a data set is scored by: its training loss and its test score.
_REGRESSION_SETS = ("diabetes",)
assert tuple(BUILTINS) == BUILTIN_MODELS, "mcsim.specs.BUILTIN_MODELS must list the recipes of BUILTINS"


# ---------------------------------------------------------------- public API


@torch.no_grad()
def randomized(model: nn.Module, seed: int = 1) -> nn.Module:
    """``model`` in eval mode with random BatchNorm statistics and affine parameters, and no all-zero
    layer (a ViT's head starts at zero): a network built without its weights file, whose numbers then
    exercise every layer (tests, benchmarks, ``scripts/zoo.py``). Running means in [-0.5, 0.5),
    variances and scales in [0.5, 1.5), shifts in [-0.2, 0.2); zero layers get normal(0, 0.05) weights."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not m.weight.any():
            m.weight.normal_(0, 0.05, generator=g)
    return model.eval()


def load_model(spec: ModelSpec) -> nn.Module:
    """The model of ``spec``, on CPU, in eval mode, with ``requires_grad`` off; its ``mcsim_spec``
    attribute is ``spec`` (how :meth:`AnalogModel.save` knows how to rebuild it)."""
    if spec.factory is not None:
        model = _load_factory(spec)
    else:
        kind, _, arch = spec.name.partition(":")
        model = _load_builtin(arch) if kind == "builtin" else _load_torchvision(arch, spec)
    model = model.to("cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.mcsim_spec = spec
    return model


def cache_dir() -> Path:
    """Where trained built-in models live: ``$MCSIM_CACHE_DIR`` or the user cache dir of mcsim."""
    env = os.environ.get("MCSIM_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("mcsim"))


def builtin_path(name: str) -> Path:
    """Cache file of built-in model ``name``; its name carries the recipe digest."""
    return cache_dir() / f"{name}-{BUILTINS[name].digest()}.pt"


def builtin_metadata(name: str) -> dict:
    """Training record of a built-in model (test_accuracy, train_seconds, ...); trains it if needed."""
    return _builtin_checkpoint(name)["meta"]


# ---------------------------------------------------------------- built-ins


def _load_builtin(name: str) -> nn.Module:
    model = BUILTINS[name].build()
    model.load_state_dict(_builtin_checkpoint(name)["state_dict"])
    return model


def _builtin_checkpoint(name: str) -> dict:
    """Load the cached checkpoint, or train and cache it (atomically)."""
    path = builtin_path(name)
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt file: retrain over it
            warnings.warn(f"retraining builtin:{name}: cannot read {path} ({exc})")
    checkpoint = _train(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return checkpoint


def _train(name: str) -> dict:
    """Train a built-in model deterministically (one thread, deterministic algorithms, fixed seeds)."""
    recipe = BUILTINS[name]
    data = DataSpec(name=recipe.dataset)
    train, test = load_split(data, "train"), load_split(data, "test")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    start = time.perf_counter()
    try:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = recipe.build()
            _fit(model, train.images, torch.as_tensor(train.targets), recipe)
            score = _score(model, test.images, torch.as_tensor(test.targets), recipe.dataset)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    meta = {"name": name, "recipe": recipe.digest(), **score,
            "train_seconds": round(time.perf_counter() - start, 2), "torch": str(torch.__version__)}
    return {"state_dict": model.state_dict(), "meta": meta}


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe) -> None:
    """Adam with a cosine learning-rate decay over all steps; fixed-seed shuffling."""
    gen = torch.Generator().manual_seed(recipe.seed)
    steps_per_epoch = -(-len(x) // recipe.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * steps_per_epoch)
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(recipe.batch_size):
            opt.zero_grad()
            _loss(model(x[idx]), y[idx], recipe.dataset).backward()
            opt.step()
            sched.step()
    model.eval()


def _loss(out: torch.Tensor, y: torch.Tensor, dataset: str) -> torch.Tensor:
    """Mean squared error on a regression set, else cross-entropy over the last dim (a language
    model's logits (B, T, V) count every token)."""
    if dataset in _REGRESSION_SETS:
        return nn.functional.mse_loss(out, y)
    return nn.functional.cross_entropy(out.flatten(0, -2), y.flatten())


@torch.no_grad()
def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dataset: str) -> dict:
    """The test score recorded with a built-in: ``test_accuracy``, or ``test_mse`` / ``test_perplexity``."""
    model.eval()
    out = model(x)
    if dataset in _REGRESSION_SETS:
        return {"test_mse": float(_loss(out, y, dataset))}
    if out.dim() > 2:
        return {"test_perplexity": float(_loss(out, y, dataset).exp())}
    return {"test_accuracy": float((out.argmax(1) == y).float().mean())}


# ---------------------------------------------------------------- torchvision and factory


def _load_torchvision(arch: str, spec: ModelSpec) -> nn.Module:
    if spec.weights is None:
        return torchvision.models.get_model(arch, weights=None, **spec.kwargs)
    enum = torchvision.models.get_model_weights(arch)
    if spec.weights in enum.__members__:
        weights = enum[spec.weights]
        _require_hub_file(arch, spec.weights, weights.url)
        # The file is in the hub cache, so torchvision loads it without any download.
        return torchvision.models.get_model(arch, weights=weights, **spec.kwargs)
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise ModelError(f"model.weights: {spec.weights!r} is neither an existing file nor a weight name "
                         f"of {arch} ({', '.join(enum.__members__)})")
    model = torchvision.models.get_model(arch, weights=None, **spec.kwargs)
    _load_state(model, path, "model.weights")
    return model


def hub_file(url: str) -> Path:
    """Where torch hub keeps the file of ``url``: ``<torch.hub.get_dir()>/checkpoints/<basename>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _require_hub_file(arch: str, name: str, url: str) -> None:
    file = hub_file(url)
    if not file.is_file():
        raise ModelError(f"model.weights: {arch} {name} needs {file.name}, which is not in the torch hub "
                         f"cache; mcsim never downloads: put the file from {url} at {file}")


def _load_factory(spec: ModelSpec) -> nn.Module:
    fn = import_object(spec.factory, "model.factory", ModelError)
    try:
        model = fn(**spec.kwargs)
    except Exception as exc:
        raise ModelError(f"model.factory: {spec.factory}(**model.kwargs) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory: {spec.factory} returned {type(model).__name__}, not an nn.Module")
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise ModelError(f"model.checkpoint: {spec.checkpoint} is not a file")
        _load_state(model, path, "model.checkpoint")
    return model


def _load_state(model: nn.Module, path: Path, field: str) -> None:
    """Load a state_dict file, or a checkpoint dict holding one under 'state_dict' or 'model'."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{field}: cannot read {path} as a state_dict "
                         f"(save one with torch.save(model.state_dict(), path)): {exc}") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ModelError(f"{field}: {path} holds a {type(obj).__name__}, not a state_dict")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    try:
        model.load_state_dict(obj)
    except RuntimeError as exc:
        raise ModelError(f"{field}: {path} does not fit the model: {exc}") from exc
