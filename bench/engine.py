"""Engine benchmark: the analog model's overhead over the digital model, measured in one process.

For each configuration prints one JSON line with ``overhead_ratio =
seconds_per_image_trial / digital_seconds_per_image`` (steady state: chips programmed and cached,
as in a task that evaluates many batches), and the one-time cost of programming the chips.
Parasitic configurations also print their ratio to the same configuration without parasitics.

    python bench/engine.py                      # ResNet18 at 224x224 and the built-in CNN, T=8
    python bench/engine.py --models mnist-cnn   # quick
    python bench/engine.py --models digits-vit digits-cnn   # the built-in transformer beside a CNN
    python bench/engine.py --memory             # ResNet50, batch 16, T=64: peak RSS
Targets (issue 2, CPU, T=8): (a) <= 1.5, (b) <= 6, (c) <= 12; parasitics (issue 4): <= 4x.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torchvision

from mcsim import Hardware, convert
from mcsim.engine.convert import pick_device

ERR = {"model": "proportional", "sigma": 0.05}
CONFIGS = {
    "a_differential_adc8": dict(mapping="differential", slices=1, adc={"bits": 8}, error=ERR),
    "b_offset_4slices": dict(mapping="offset", slices=4, adc={"bits": 8}, error=ERR),
    "c_bitserial_adc_per_bit": dict(input_mode="bitserial", input_accumulation="digital", adc={"bits": 8}, error=ERR),
    "p_parasitics_analog": dict(adc={"bits": 8}, error=ERR, parasitics={"rp": 1e-4}),
    "p_parasitics_bitserial": dict(input_mode="bitserial", input_accumulation="digital", adc={"bits": 8}, error=ERR, parasitics={"rp": 1e-4}),
}
BASELINE = {"p_parasitics_analog": "a_differential_adc8", "p_parasitics_bitserial": "c_bitserial_adc_per_bit"}


def _timed(fn, device, repeat):
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def workload(name: str):
    if name == "resnet18":
        torch.manual_seed(0)
        return torchvision.models.resnet18().eval(), (3, 224, 224)
    from mcsim.models import load_model
    from mcsim.specs import ModelSpec

    return load_model(ModelSpec(name=f"builtin:{name}")), (1, 8, 8) if name.startswith("digits") else (1, 28, 28)


def bench(model_name, configs, trials, batch, device, repeat):
    model, shape = workload(model_name)
    model = model.to(device)
    x = torch.randn(batch, *shape, device=device)
    with torch.no_grad():
        model(x)
        digital = _timed(lambda: model(x), device, repeat) / batch
    per_image_trial = {}
    for name in configs:
        hw = Hardware(**CONFIGS[name])
        analog = convert(model, hw, trials=trials, seed=0, device=device)
        analog.calibrate([torch.randn(batch, *shape)])
        t0 = time.perf_counter()
        analog(x)  # programs and caches the chips
        first = time.perf_counter() - t0
        steady = _timed(lambda: analog(x), device, repeat)
        per_image_trial[name] = steady / (batch * trials)
        row = {
            "model": model_name, "config": name, "device": str(device), "trials": trials, "batch": batch,
            "digital_seconds_per_image": round(digital, 6),
            "seconds_per_image_trial": round(per_image_trial[name], 6),
            "overhead_ratio": round(per_image_trial[name] / digital, 3),
            "programming_seconds_per_chip": round(max(first - steady, 0.0) / trials, 4),
            "chips_per_pass": analog.chip_block(x),
        }
        if name in BASELINE and BASELINE[name] in per_image_trial:
            row["ratio_vs_no_parasitics"] = round(per_image_trial[name] / per_image_trial[BASELINE[name]], 3)
        print(json.dumps(row), flush=True)


def memory(device):
    """ResNet50, batch 16, 64 chips: the chips are processed in blocks that fit the memory budget."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    hw = Hardware(error=ERR, adc={"bits": 8})
    analog = convert(model, hw, trials=64, seed=0, device=device)
    analog.calibrate([torch.randn(4, 3, 224, 224)])
    x = torch.randn(16, 3, 224, 224)
    t = time.perf_counter()
    out = analog(x)
    row = {
        "model": "resnet50", "batch": 16, "trials": 64, "logits": list(out.shape), "seconds": round(time.perf_counter() - t, 1),
        "chips_per_pass": analog.chip_block(x), "cache_chips": analog.ctx.cache,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if device.type == "cuda":
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(row), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "mnist-cnn"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--memory", action="store_true", help="only the ResNet50 peak-memory check")
    a = p.parse_args()
    device = pick_device(a.device)
    if a.memory:
        return memory(device)
    for m in a.models:
        batch = a.batch if m == "resnet18" else max(a.batch, 64)
        bench(m, a.configs, a.trials, batch, device, a.repeat)


if __name__ == "__main__":
    main()
