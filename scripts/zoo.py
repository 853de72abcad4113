"""Check that every torchvision classification model converts, is exact on ideal hardware, and runs noisy.

Random weights (BatchNorm statistics randomized, all-zero layers such as ViT's head re-drawn), a
batch of 2 small images (64x64 where the architecture allows; ViTs are built for 64x64 or 56x56
through their ``image_size`` argument; otherwise the smallest of 64, 224 that runs). Each model runs
in its own subprocess (memory, timeout) and prints one JSON line; the driver prints a Markdown table.

    python scripts/zoo.py                          # the whole zoo -> Markdown table on stdout
    python scripts/zoo.py --models vit_b_16 swin_t --out docs/zoo.md
    python scripts/zoo.py --one resnet18           # one model, one JSON line

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


def _build(name: str):
    import torch
    import torchvision

    from mcsim.models import randomized

    kwargs = {}
    if name.startswith("vit_"):
        kwargs["image_size"] = 56 if name.endswith("_14") else 64
    torch.manual_seed(0)
    return randomized(torchvision.models.get_model(name, weights=None, **kwargs)), kwargs


def _input(model, name):
    import torch

    sizes = [224] if name.startswith("maxvit") else [64, 224]
    if name.startswith("vit_"):
        sizes = [model.image_size]
    for s in sizes:
        x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(2))
        try:
            with torch.no_grad():
                return x, model(x)
        except Exception as e:  # too small for this architecture
            last = e
    raise RuntimeError(f"no input size of {sizes} runs digitally: {last}")


def check_one(name: str) -> dict:
    import torch

    from mcsim import Hardware, convert

    row = {"model": name}
    t0 = time.perf_counter()
    model, kwargs = _build(name)
    row["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    if sum(p.numel() for p in model.parameters()) > MAX_PARAMS:
        row.update(converts=None, reason=f"over {MAX_PARAMS / 1e6:.0f}M parameters (memory)")
        return row
    x, ref = _input(model, name)
    row["input"] = f"{x.shape[-1]}x{x.shape[-1]}" + (f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
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
        noisy = "ok" if r["noisy_ok"] else f"FAILED {r.get('noisy_error', '')}"
        lines.append(f"| {r['model']} | {r['params_M']} | {r['input']} | yes | {r['analog_layers']} | {kept} | "
                     f"{r['max_rel_err']:.1e} | {noisy} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", help="check one model and print its JSON line")
    p.add_argument("--models", nargs="+", help="default: every torchvision classification model")
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

    names = a.models or torchvision.models.list_models(module=torchvision.models)
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
