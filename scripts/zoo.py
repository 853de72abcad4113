"""Check that every torchvision classification model converts, is exact on ideal hardware, and runs noisy.

Random weights (BatchNorm statistics randomized, all-zero layers such as ViT's head re-drawn), a
batch of 2 small images (64x64 where the architecture allows; ViTs are built for 64x64 or 56x56
through their ``image_size`` argument; otherwise the smallest of 64, 224 that runs). Each model runs
in its own subprocess (memory, timeout) and prints one JSON line; the driver prints a Markdown table.

    python scripts/zoo.py                          # the whole zoo -> Markdown table on stdout
    python scripts/zoo.py --models vit_b_16 swin_t --out docs/zoo.md
    python scripts/zoo.py --one resnet18           # one model, one JSON line
    python scripts/zoo.py --set layers             # the other layer types (see LAYERS) -> table

``--set layers`` checks, the same way, networks of the layer types beyond 2-D image classifiers
(:data:`LAYERS`): small 1-D, 3-D and transposed CNNs, torch's Transformer modules, the built-in
row transformer and torchvision's video classifiers (random weights, a clip of 2 x 3 x 8 x 32 x 32,
or the smallest their architecture takes).

Ideal: ``Hardware(weight_bits=None, input_bits=None, adc={"bits": None})``, 1 chip: the maximum of
``|analog - digital| / max|digital|`` over the logits. Noisy: proportional programming error 0.05,
8-bit weights, inputs and ADC (calibrated on one batch), 2 chips: finite logits that differ per chip.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

MAX_PARAMS = int(float(os.environ.get("ZOO_MAX_PARAMS", 150e6)))  # default skips the largest: memory, hours
NOISY = dict(error={"model": "proportional", "sigma": 0.05}, weight_bits=8, input_bits=8, adc={"bits": 8})
IDEAL = dict(weight_bits=None, input_bits=None, adc={"bits": None})


def _conv1d_net():
    from torch import nn

    return nn.Sequential(nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Conv1d(16, 32, 5, stride=2, padding=2, groups=4), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Conv1d(32, 32, 3, padding="same", dilation=2), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(32, 10))


def _conv3d_net():
    from torch import nn

    return nn.Sequential(nn.Conv3d(3, 16, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.BatchNorm3d(16),
                         nn.ReLU(), nn.Conv3d(16, 32, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(32, 10))


def _convtranspose_net():
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _seq2seq():
    """nn.Transformer on a sequence and its first half (causal target mask), mean-pooled to 10 logits."""
    from torch import nn

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = nn.Transformer(32, 4, 2, 2, 64, batch_first=True)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            tgt = x[:, : x.shape[1] // 2]
            mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
            return self.head(self.t(x, tgt, tgt_mask=mask, tgt_is_causal=True).mean(1))

    return Seq2Seq()


def _encoder(batch_first: bool):
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=batch_first)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=batch_first)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            h = self.enc(x) if batch_first else self.enc(x.transpose(0, 1)).transpose(0, 1)
            return self.head(h.mean(1))

    return Encoder()


#: the other layer types (``--set layers``): name -> (builder, input shape)
LAYERS = {
    "conv1d-net": (_conv1d_net, (2, 1, 1600)),
    "conv3d-net": (_conv3d_net, (2, 3, 8, 32, 32)),
    "convtranspose2d-net": (_convtranspose_net, (2, 3, 32, 32)),
    "transformer-encoder": (lambda: _encoder(True), (2, 12, 32)),
    "transformer-encoder-seq-first": (lambda: _encoder(False), (2, 12, 32)),
    "transformer": (_seq2seq, (2, 12, 32)),
    "builtin:digits-transformer": (None, (2, 1, 8, 8)),
}
VIDEO_INPUT = (2, 3, 8, 32, 32)


def _build(name: str):
    import torch
    import torchvision

    from mcsim.models import randomized

    if name in LAYERS:
        torch.manual_seed(0)
        build = LAYERS[name][0]
        if build is None:  # a built-in: random weights, as every model here
            from mcsim.models import BUILTINS

            build = BUILTINS[name.removeprefix("builtin:")].build
        return randomized(build()), {}
    if name.startswith("video:"):
        torch.manual_seed(0)
        return randomized(torchvision.models.get_model(name.removeprefix("video:"), weights=None)), {}
    kwargs = {}
    if name.startswith("vit_"):
        kwargs["image_size"] = 56 if name.endswith("_14") else 64
    torch.manual_seed(0)
    return randomized(torchvision.models.get_model(name, weights=None, **kwargs)), kwargs


def _input(model, name):
    import torch

    if name in LAYERS or name.startswith("video:"):
        shapes = [LAYERS[name][1]] if name in LAYERS else [VIDEO_INPUT, (2, 3, 16, 224, 224)]
    else:
        sizes = [224] if name.startswith("maxvit") else [64, 224]
        if name.startswith("vit_"):
            sizes = [model.image_size]
        shapes = [(2, 3, s, s) for s in sizes]
    for shape in shapes:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        try:
            with torch.no_grad():
                return x, model(x)
        except Exception as e:  # too small for this architecture
            last = e
    raise RuntimeError(f"no input of {shapes} runs digitally: {last}")


def check_one(name: str) -> dict:
    import torch

    from mcsim import Hardware, convert

    row = {"model": name}
    t0 = time.perf_counter()
    model, kwargs = _build(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    row["params_M"] = round(params, 1) or round(params, 3)  # the small networks of --set layers: 3 decimals
    if sum(p.numel() for p in model.parameters()) > MAX_PARAMS:
        row.update(converts=None, reason=f"over {MAX_PARAMS / 1e6:.0f}M parameters (memory)")
        return row
    x, ref = _input(model, name)
    image = x.dim() == 4 and name not in LAYERS  # a square image; else the whole shape of one input
    row["input"] = (f"{x.shape[-1]}x{x.shape[-1]}" if image else "x".join(map(str, x.shape[1:]))) + (f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            analog = convert(model, Hardware(**IDEAL), trials=1, seed=0, device="cpu")
            out = analog(x)[0]
    except Exception as e:
        row.update(converts=False, reason=f"{type(e).__name__}: {e}"[:300])
        return row
    row.update(converts=True, analog_layers=len(analog.layer_names),
               attention_rewritten=len(analog.rewritten),
               kept_digital={d["name"]: d["reason"] for d in analog.digital_layers if d["kind"] == "layer"},
               digital_parts=len(analog.digital_layers),
               warnings=sorted({str(w.message)[:200] for w in caught}),
               max_rel_err=float((out - ref).abs().max() / ref.abs().max()))
    del analog
    try:
        noisy = convert(model, Hardware(**NOISY), trials=2, seed=0, device="cpu")
        noisy.calibrate([x])
        y = noisy(x)
        row["noisy_ok"] = bool(torch.isfinite(y).all() and not torch.equal(y[0], y[1]))
    except Exception as e:
        row["noisy_ok"] = False
        row["noisy_error"] = f"{type(e).__name__}: {e}"[:300]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _table(rows: list[dict]) -> str:
    head = ("| model | params (M) | input | converts | analog layers | Conv/Linear kept digital (why) | "
            "max rel. error ideal vs digital | noisy run |\n|---|---:|---|---|---:|---|---:|---|")
    lines = [head]
    for r in rows:
        if r.get("converts") is None or str(r.get("reason", "")).startswith("not checked here: "):
            why = str(r.get('reason', '')).removeprefix('not checked here: ')
            lines.append(f"| {r['model']} | {r.get('params_M', '')} | | not checked: {why} | | | | |")
            continue
        if not r.get("converts"):
            lines.append(f"| {r['model']} | {r.get('params_M', '')} | {r.get('input', '')} | no: {r.get('reason', '')} | | | | |")
            continue
        kept = "; ".join(f"{n}: {why}" for n, why in r["kept_digital"].items()) or "none"
        if len(r["kept_digital"]) > 3:  # one reason shown, the rest counted
            first, why = next(iter(r["kept_digital"].items()))
            kept = f"{len(r['kept_digital'])} layers, e.g. {first}: {why}"
        noisy = "ok" if r["noisy_ok"] else f"FAILED {r.get('noisy_error', '')}"
        lines.append(f"| {r['model']} | {r['params_M']} | {r['input']} | yes | {r['analog_layers']} | {kept} | "
                     f"{r['max_rel_err']:.1e} | {noisy} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", help="check one model and print its JSON line")
    p.add_argument("--models", nargs="+", help="default: every torchvision classification model (or --set)")
    p.add_argument("--set", choices=["classification", "layers"], default="classification",
                   help="layers: the other layer types (LAYERS) and torchvision's video classifiers")
    p.add_argument("--timeout", type=int, default=900, help="seconds per model")
    p.add_argument("--out", help="also write the table (Markdown) here")
    p.add_argument("--jsonl", help="append each model's JSON line here")
    p.add_argument("--table", help="only print the table of the JSON lines in this file (and --models not in it)")
    a = p.parse_args()
    if a.table:
        with open(a.table) as f:
            rows = {r["model"]: r for r in map(json.loads, f)}
        rest = [m for m in (a.models or []) if m not in rows]
        rows = list(rows.values()) + [{"model": m, "converts": None, "reason": "not run in this session's time box"}
                                      for m in rest]
        print(_table(rows))
        return
    if a.one:
        import torch

        torch.set_num_threads(int(os.environ.get("ZOO_THREADS", "2")))
        print(json.dumps(check_one(a.one)), flush=True)
        return
    import torchvision

    if a.models:
        names = a.models
    elif a.set == "layers":
        names = list(LAYERS) + [f"video:{n}" for n in torchvision.models.list_models(module=torchvision.models.video)]
    else:
        names = torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in names:
        try:
            res = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                                 timeout=a.timeout)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"model": name, "converts": False,
                                                       "reason": f"crashed (rc {res.returncode}): {res.stderr.strip()[-300:]}"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "converts": False, "reason": f"not finished within {a.timeout} s"}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
    table = _table(rows)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
