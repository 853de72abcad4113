"""Engine benchmark: the analog model's overhead over the digital model, as a user feels it.

The digital baseline runs as many images per forward as the analog pass, in the same arithmetic
(IEEE float32: on CUDA the engine turns cuDNN's default TF32 off, mcsim.engine.convert.ieee_float32): a digital forward of
``B * T`` images against an analog forward of ``B`` images on ``T`` chips, so

    overhead_ratio = analog seconds per (image, chip) / digital seconds per image
                   = analog seconds of one pass / digital seconds of one pass.

Steady state: the chips are programmed and cached before the timed passes (as in a task that
evaluates many batches); the one-time programming cost is printed apart: a programming pass of
one image (chips forgotten first, after a warm-up) minus a steady pass of one image (the first
forward of a process also pays kernel selection and allocator growth: ``first_forward_seconds``). A pass shorter than
0.2 s is looped within its timing sample. The analog and digital
passes alternate (analog, digital, analog, digital, ...), ``--repeat`` times; each repeat's ratio
comes from its adjacent pair, so load on a shared machine hits both sides alike. Per
(model, config) one JSON line with the median ratio and its range (min-max over repeats);
parasitic configs add their ratio to the same config without parasitics, and the chip effects of
issue 20 theirs to (a) with constant read noise and drift (per repeat, the ratio of the two load-corrected overhead
ratios; and the ratio of their programming times). At the end: a table, and the process's user and
system CPU time over the run (the target: system time under 15%).

    python bench/engine.py                           # ResNet18 at 112 and 224, the built-in CNN
    python bench/engine.py --models mnist-cnn --trials 4 --repeat 3   # quick
    python bench/engine.py --models resnet18-112 --configs a_differential_adc8
    python bench/engine.py --models digits-vit digits-cnn --repeat 3   # a transformer beside a CNN
    python bench/engine.py --models mnist-lstm --configs a_differential_adc8 --repeat 3   # an LSTM
    python bench/engine.py --memory                  # ResNet50, batch 16, T=64: peak RSS
Models: ``mnist-cnn`` (any built-in, batch 64; ``digits-vit`` is the built-in transformer, ``mnist-lstm``
the built-in LSTM: 28 steps, its target 3x on config (a)),
``resnet18``/``resnet50``... (torchvision, random weights) at 224x224, or ``resnet18-112`` for
another size (batch 8).
Targets (issue 14, T=8): (a) <= 1.3, (b) <= 5, (c) <= 10; parasitics <= 4x the same config without;
the chip effects (issue 20) <= 1.2x and programming <= 1.5x (a) with constant read noise and drift:
    python bench/engine.py --models resnet18-112 --configs a_drift_read_noise u_chip_effects
3-bit input slices with an ADC per slice (issue 25, docs/physics.md section 16) <= 3.5x (a):
    python bench/engine.py --models resnet18-112 --configs a_differential_adc8 s_input_slices3_adc_per_slice --repeat 3
digital subtraction (issue 25) <= 2.2x (a):
    python bench/engine.py --models resnet18-112 --configs a_differential_adc8 s_digital_subtraction --repeat 3
Numbers from a machine shared with other jobs are noisy: read the range beside the median.
The engine sets its allocator thresholds in-process on conversion, as in any process that
converts a model (mcsim/engine/allocator.py: large buffers reused instead of mapped anew per call);
``--default-malloc`` keeps glibc's own (``MCSIM_MALLOPT=0``), to see the difference.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torchvision
from torch import nn

from mcsim import Hardware, convert
from mcsim.engine.allocator import reuse_large_buffers
from mcsim.engine.convert import AnalogModel, ieee_float32, pick_device

ERR = {"model": "proportional", "sigma": 0.05}
BITS = dict(weight_bits=8, input_bits=8, adc={"bits": 8}, error=ERR)
SERIAL = dict(input_mode="bitserial", input_accumulation="digital")
CONFIGS = {
    "a_differential_adc8": dict(mapping="differential", slices=1, **BITS),
    "b_offset_4slices": dict(mapping="offset", slices=4, **BITS),
    "c_bitserial_adc_per_bit": dict(mapping="differential", slices=1, **SERIAL, **BITS),
    "p_parasitics_analog": dict(mapping="differential", slices=1, parasitics={"rp": 1e-4}, **BITS),
    "p_parasitics_bitserial": dict(mapping="differential", slices=1, parasitics={"rp": 1e-4, "rows": "driven"},
                                   **SERIAL, **BITS),
    # Multi-bit input slices (docs/physics.md section 16): 8-bit inputs in 3-bit slices (3 MVMs, PRIME's
    # DAC), an ADC conversion per slice.
    "s_input_slices3_adc_per_slice": dict(mapping="differential", slices=1, input_slice_bits=3, **SERIAL, **BITS),
    "d_bitserial_analog_acc": dict(mapping="differential", slices=1, input_mode="bitserial",
                                   input_accumulation="analog", **BITS),
    # Gated rows (docs/physics.md section 8): one exact solve per (chip, bit, image, position, column).
    "p_gated_bitserial_digital": dict(mapping="differential", slices=1, parasitics={"rp": 1e-4, "rows": "gated"},
                                      **SERIAL, **BITS),
    "p_gated_bitserial_analog": dict(mapping="differential", slices=1, input_mode="bitserial",
                                     input_accumulation="analog", parasitics={"rp": 1e-4, "rows": "gated"}, **BITS),
    # The user's devices and chips (docs/physics.md section 13): (a) with the effects that existed before
    # (constant read noise, drift with a constant nu), then with stuck cells, chip/array/column
    # variation, PCM drift nu(G) with read noise growing in time, ADC mismatch and comparator noise.
    "a_drift_read_noise": dict(mapping="differential", slices=1, read_noise={"model": "proportional", "sigma": 0.02},
                               drift={"time_s": 3600, "nu_std": 0.01, "compensate": True}, **BITS),
    "u_chip_effects": dict(mapping="differential", slices=1, **{
        **BITS, "adc": {"bits": 8, "offset_lsb": 0.5, "gain_sigma": 0.01, "noise_lsb": 0.3}},
        faults={"stuck_off": 0.001, "stuck_on": 0.001}, variation={"chip": 0.02, "array": 0.02, "column": 0.02},
        drift={"model": "pcm", "time_s": 3600, "compensate": True}, read_noise={"model": "pcm", "t_read_s": 250e-9}),
    # Digital subtraction (docs/physics.md section 15): G+ and G- each through its own ADC.
    "s_digital_subtraction": dict(mapping="differential", slices=1, subtraction="digital", **BITS),
}
# Configs measured against another one (per repeat, the ratio of the two load-corrected overhead
# ratios), with the target of that ratio: parasitics at most 4x the same config without (gated rows,
# one solve per input vector and bit: issue 10, at most 30x, aim 10x); the chip effects 1.2x (issue 20);
# 3-bit input slices with an ADC per slice 3.5x analog inputs (issue 25).
BASELINE = {
    "p_parasitics_analog": ("a_differential_adc8", 4.0),
    "p_parasitics_bitserial": ("c_bitserial_adc_per_bit", 4.0),
    "p_gated_bitserial_digital": ("c_bitserial_adc_per_bit", 30.0),
    "p_gated_bitserial_analog": ("d_bitserial_analog_acc", 30.0),
    "u_chip_effects": ("a_drift_read_noise", 1.2),
    "s_input_slices3_adc_per_slice": ("a_differential_adc8", 3.5),
    "s_digital_subtraction": ("a_differential_adc8", 2.2),  # issue 25
}
TARGETS = {"a_differential_adc8": 1.3, "b_offset_4slices": 5.0, "c_bitserial_adc_per_bit": 10.0}
# Models with targets of their own, in place of TARGETS: the built-in LSTM (issue 22) within 3x of its
# digital forward (torch's fused LSTM kernel) on config (a).
MODEL_TARGETS = {"mnist-lstm": {"a_differential_adc8": 3.0}}


# ------------------------------------------------------------------ workloads
@dataclass
class Workload:
    name: str
    model: nn.Module
    shape: tuple  # one image (C, H, W)
    batch: int  # default images per analog pass


def workload(name: str) -> Workload:
    """``mnist-cnn`` (a built-in), ``resnet18`` (torchvision, random weights, 224x224) or ``resnet18-112``."""
    arch, _, size = name.partition("-")
    if hasattr(torchvision.models, arch) and (not size or size.isdigit()):
        torch.manual_seed(0)
        side = int(size or 224)
        return Workload(name, getattr(torchvision.models, arch)().eval(), (3, side, side), 8)
    from mcsim.models import load_model
    from mcsim.specs import ModelSpec

    from mcsim.models import BUILTINS

    side = 8 if BUILTINS[name].dataset == "digits" else 28
    return Workload(name, load_model(ModelSpec(name=f"builtin:{name}")), (1, side, side), 64)


# ------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_SAMPLE_S = 0.2  # a timing sample of a short pass loops over it for at least this long


def timed(fn: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Wall seconds of one call of ``fn``, averaged over ``calls`` calls (the device's queue drained)."""
    _sync(device)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / calls


def calls_for(seconds: float) -> int:
    """Calls per timing sample so that a sample lasts at least MIN_SAMPLE_S."""
    return max(1, math.ceil(MIN_SAMPLE_S / max(seconds, 1e-6)))


def cpu_times() -> tuple[float, float]:
    """This process's (user, system) CPU seconds so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def prepared(model: nn.Module, hw: Hardware, trials: int, shape: tuple, batch: int, device) -> AnalogModel:
    """A converted, calibrated model whose memory probe for ``batch`` images has run (no chip programmed)."""
    analog = convert(model, hw, trials=trials, seed=0, device=device)
    analog.calibrate([torch.randn(batch, *shape)])
    analog.chip_block(torch.randn(batch, *shape, device=device))  # the probe pass, kept out of the timings
    return analog


def clear_chips(analog: AnalogModel) -> None:
    """Forget the programmed chips (the next forward programs them again)."""
    for layer in analog.analog_layers():
        layer.clear_cache()


@torch.no_grad()
def programming_cost(analog: AnalogModel, shape: tuple, device, steady: int = 3) -> float:
    """Seconds to program all of ``analog``'s chips, timed on passes of one image.

    A pass of one image programs every chip as a full batch does, and its own cost is small, so
    the difference "programming pass minus steady pass" is not lost in the noise of a long pass.
    A warm-up pass first (kernels for this shape), then the chips are forgotten and programmed
    again. Leaves them programmed (in the blocks of one-image passes).
    """
    x = torch.randn(1, *shape, device=device)
    timed(lambda: analog(x), device)
    clear_chips(analog)
    program = timed(lambda: analog(x), device)
    return max(program - statistics.median(timed(lambda: analog(x), device) for _ in range(steady)), 0.0)


@torch.no_grad()
def programming_seconds(model: nn.Module, hw: Hardware, shape: tuple, device) -> float:
    """Seconds to program one chip: a programming pass of a fresh T=1 model minus a steady pass."""
    return programming_cost(prepared(model, hw, 1, shape, 1, device), shape, device)


@torch.no_grad()
def interleaved(model: nn.Module, analog, x: torch.Tensor, xd: torch.Tensor, device, repeat: int,
                calls: tuple[int, int] = (1, 1), deadline: Optional[float] = None) -> tuple[list[float], list[float]]:
    """Seconds per pass of ``repeat`` analog samples on ``x`` and digital samples on ``xd``, alternating.

    ``calls``: passes per (analog, digital) sample. Stops early (after at least one pair) once
    ``time.monotonic()`` passes ``deadline``.
    """
    ta, td = [], []
    for _ in range(repeat):
        ta.append(timed(lambda: analog(x), device, calls[0]))
        td.append(timed(lambda: model(xd), device, calls[1]))
        if deadline is not None and time.monotonic() > deadline:
            break
    return ta, td


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


# ------------------------------------------------------------------ one (model, config)
@torch.no_grad()
def measure(wl: Workload, config: str, trials: int, batch: int, device, repeat: int,
            deadline: Optional[float] = None) -> dict:
    """One config on one workload: the JSON row (without the ratio to a baseline)."""
    hw = Hardware(**CONFIGS[config])
    if device.type == "cuda":  # the previous config's blocks leave the GPU (the memory budget sees free memory)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    analog = prepared(wl.model, hw, trials, wl.shape, batch, device)
    x = torch.randn(batch, *wl.shape, device=device)
    xd = torch.randn(batch * trials, *wl.shape, device=device)
    digital = ieee_float32()(wl.model)  # the analog side's arithmetic: IEEE float32, no TF32 on CUDA
    first = timed(lambda: analog(x), device)  # programs (and caches) the chips
    timed(lambda: digital(xd), device)  # warm-up of the digital side
    calls = (calls_for(timed(lambda: analog(x), device)), calls_for(timed(lambda: digital(xd), device)))
    ta, td = interleaved(digital, analog, x, xd, device, repeat, calls, deadline)
    ratios = [a / d for a, d in zip(ta, td)]
    steady = statistics.median(ta)
    program = programming_cost(analog, wl.shape, device)
    row = {
        "model": wl.name, "config": config, "device": str(device), "threads": torch.get_num_threads(),
        "trials": trials, "batch": batch, "repeats": len(ta), "passes_per_sample": list(calls),
        "overhead_ratio": _spread(ratios), "target": MODEL_TARGETS.get(wl.name, TARGETS).get(config),
        "ratio_per_repeat": [round(v, 3) for v in ratios],
        "analog_seconds_per_image_chip": round(steady / (batch * trials), 7),
        "digital_seconds_per_image": round(statistics.median(td) / (batch * trials), 7),
        "image_chips_per_second": round(batch * trials / steady, 1),
        "first_forward_seconds": round(first, 3),
        "programming_seconds": round(program, 3),
        "programming_seconds_per_chip": round(program / trials, 4),
        "chips_per_pass": analog.chip_block(x), "chips_cached": analog.ctx.cache,
        "_ratios": ratios,
    }
    if device.type == "cuda":
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def bench(model_name: str, configs: list[str], trials: int, batch: Optional[int], device, repeat: int,
          deadline: Optional[float] = None, emit: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Every config on one workload; prints (``emit``) and returns one row per config."""
    wl = workload(model_name)
    wl.model = wl.model.to(device)
    batch = batch or wl.batch
    emit = emit or (lambda row: print(json.dumps(row), flush=True))
    rows: dict[str, dict] = {}
    for name in configs:
        if deadline is not None and time.monotonic() > deadline:
            print(f"# {model_name}: time budget spent, skipping {name}", flush=True)
            continue
        row = measure(wl, name, trials, batch, device, repeat, deadline)
        base_name, target = BASELINE.get(name, (None, None))
        if base_name in rows:
            base = rows[base_name]
            row["baseline"] = base_name
            row["ratio_vs_baseline"] = _spread([p / b for p, b in zip(row["_ratios"], base["_ratios"])])
            row["programming_vs_baseline"] = round(row["programming_seconds"] / base["programming_seconds"], 2)
            row["target"] = target
        rows[name] = row
        emit({k: v for k, v in row.items() if not k.startswith("_")})
    return list(rows.values())


# ------------------------------------------------------------------ report
def _mark(value: float, target: Optional[float]) -> str:
    return "" if target is None else ("ok" if value <= target else "OVER")


def table(rows: list[dict]) -> str:
    """The readable summary: per (model, config) the median ratio, its range and the target."""
    head = f"{'model':<14} {'config':<26} {'ratio med [min-max]':<34} {'target':>7}  {'':4} " \
           f"{'img*chip/s':>10} {'prog s/chip':>11} {'chips/pass':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        key = "ratio_vs_baseline" if "ratio_vs_baseline" in r else "overhead_ratio"
        s = r[key]
        shown = f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"
        shown += f" (vs {r['baseline']})" if key != "overhead_ratio" else ""
        target = r.get("target")
        lines.append(f"{r['model']:<14} {r['config']:<26} {shown:<34} {target if target else '':>7}  "
                     f"{_mark(s['median'], target):4} {r['image_chips_per_second']:>10} "
                     f"{r['programming_seconds_per_chip']:>11} {r['chips_per_pass']:>10}")
        if key != "overhead_ratio":
            o = r["overhead_ratio"]
            lines.append(f"{'':<14} {'':<26} {'= overhead ' + format(o['median'], '.2f'):<34} "
                         f"programming {r['programming_vs_baseline']}x the baseline's")
    return "\n".join(lines)


def cpu_line(start: tuple[float, float]) -> dict:
    """User and system CPU seconds since ``start`` and the system share (target < 15%)."""
    user, sys_ = (now - then for now, then in zip(cpu_times(), start))
    return {"user_s": round(user, 1), "system_s": round(sys_, 1),
            "system_share": round(sys_ / max(user + sys_, 1e-9), 3), "system_target": 0.15}


# ------------------------------------------------------------------ memory
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
    p.add_argument("--models", nargs="+", default=["resnet18-112", "resnet18-224", "mnist-cnn"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--batch", type=int, default=None, help="images per analog pass (default: 8 ResNets, 64 CNN)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved analog/digital pairs per config")
    p.add_argument("--device", default="auto")
    p.add_argument("--memory", action="store_true", help="only the ResNet50 peak-memory check")
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's allocator thresholds (MCSIM_MALLOPT=0; default: the engine's)")
    a = p.parse_args()
    if a.default_malloc:
        os.environ["MCSIM_MALLOPT"] = "0"  # read on the first conversion (mcsim/engine/allocator.py)
    device = pick_device(a.device)
    if a.memory:
        return memory(device)
    start = cpu_times()
    rows = []
    for m in a.models:
        rows += bench(m, a.configs, a.trials, a.batch, device, a.repeat)
    cpu = cpu_line(start)
    print(json.dumps({"cpu_time": cpu, "mallopt": list(reuse_large_buffers()),
                      "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}), flush=True)
    print()
    print(table(rows))
    print(f"CPU time over the run: user {cpu['user_s']} s, system {cpu['system_s']} s, "
          f"system share {cpu['system_share']:.1%} (target < 15%) {_mark(cpu['system_share'], 0.15)}")


if __name__ == "__main__":
    main()
