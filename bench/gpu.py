"""The GPU check, in one command (under 5 minutes on one H100/H200-class GPU):

    python bench/gpu.py                      # on a CUDA machine
    python bench/gpu.py --device cpu --quick # the same code paths on CPU, tiny sizes (a smoke test)

Prints, section by section and then as one summary:

1. overheads: the ratios (a) differential unsliced, (b) offset with 4 slices, (c) bit-serial inputs
   with an ADC per bit, for torchvision ResNet50 (random weights, 224x224), batch 64, T=16,
   measured as ``bench/engine.py`` does (digital forward of B*T images against analog forward of
   B images on T chips, interleaved, median and range over repeats); per config the image-chips
   per second (goal for (a): >= 2,000 on one H100-class GPU) and the peak GPU memory
   (``torch.cuda.max_memory_allocated``, reset per config);
2. programming: seconds to program one ResNet50 chip (a programming pass of a fresh T=1 model
   minus a steady one, one image each), per config;
3. quickstart: a smaller copy of ``scenarios/quickstart.yaml`` run twice through
   ``mcsim.run_scenario``, on ``cpu`` and on the device; per sweep point the two mean top-1
   accuracies, their difference, the Monte Carlo standard error and whether they agree within 3 SE;
4. physics (``--sections physics``, not in the default run): the device's numbers against
   references computed on the CPU: ideal hardware against float64 digital logits (the device's
   digital forward beside it, for its own TF32 rounding), each bench config's logits without device
   errors on both devices, the gated-row tree against the CPU scan and the voltage-driven column
   solve against the CPU's, and the counter-based read-noise normals element for element;
5. profile (``--sections profile``, not in the default run): the top operators of one steady pass
   of each config, by self time on the device;
6. gated (``--sections gated``, not in the default run): gated rows' cost over the same config
   without parasitics, the built-in CNN at batch 64, T=8.

A whole GPU session (about 9 minutes): the default run, then the old chip-grouped convolution for
comparison, then the checks against the CPU and gated rows::

    python bench/gpu.py
    python bench/gpu.py --sections overheads --grouped --budget 140
    python bench/gpu.py --sections physics gated --budget 150

A hard time guard (``--budget``, default 270 s) stops the run and prints what it has; each section
prints its own traceback on failure and the others still run. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # mcsim and bench/ from this checkout

from bench import engine  # noqa: E402
from mcsim import Hardware, run_scenario  # noqa: E402
from mcsim.report import summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATIO_CONFIGS = ["a_differential_adc8", "b_offset_4slices", "c_bitserial_adc_per_bit"]
THROUGHPUT_GOAL = 2000.0  # ResNet50 image-chips per second for (a), one H100-class GPU
SIZES = {  # what each mode measures
    "full": dict(model="resnet50-224", batch=64, trials=16, repeat=5, limit=500, q_trials=16, calib=500, g_batch=64),
    "quick": dict(model="resnet18-32", batch=2, trials=2, repeat=2, limit=100, q_trials=4, calib=100, g_batch=8),
}


class OutOfTime(BaseException):
    """The time guard fired (a BaseException, so that no library ``except Exception`` swallows it)."""


def _alarm(_signum, _frame):
    raise OutOfTime()


# ------------------------------------------------------------------ sections
def overheads(device, size, deadline, summary):
    rows = engine.bench(size["model"], RATIO_CONFIGS, size["trials"], size["batch"], device,
                        size["repeat"], deadline=deadline)
    summary["overheads"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the quickstart's worker process sizes its blocks to the free memory


def programming(device, size, deadline, summary):
    wl = engine.workload(size["model"])
    wl.model = wl.model.to(device)
    out = summary.setdefault("programming_seconds_per_chip", {})
    for name in RATIO_CONFIGS:
        if time.monotonic() > deadline:
            print(f"# programming: time budget spent, skipping {name}", flush=True)
            continue
        out[name] = round(engine.programming_seconds(wl.model, Hardware(**engine.CONFIGS[name]), wl.shape, device), 3)
        print(json.dumps({"model": wl.name, "config": name, "programming_seconds_per_chip": out[name]}), flush=True)


def _scenario(tmp: Path, device: str, size, run: int) -> Path:
    """A smaller copy of the quickstart, run on ``device``, written to ``tmp``."""
    sc = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    sc["data"].update(limit=size["limit"], batch_size=min(250, size["limit"]))
    sc["data"]["calibration"]["count"] = size["calib"]
    sc["trials"] = size["q_trials"]
    sc["execution"] = {"shard_images": size["limit"], "trials_per_task": max(1, size["q_trials"] // 2),
                       "device": device}
    sc["output"] = str(tmp / f"quickstart-{run}-{device}.zarr")
    path = tmp / f"quickstart-{run}-{device}.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


def _compare(cpu, dev) -> list[dict]:
    """Per sweep point: both mean top-1, their difference, its Monte Carlo SE, agreement within 3 SE.

    SE = sqrt(se_cpu**2 + se_dev**2), se = std over trials / sqrt(trials); floored at one image
    (1 / n_images), else a point whose chips are all alike (sigma 0) has SE 0.
    """
    labels = [c for c in cpu.columns if c not in {"metric", "mean", "std", "min", "p5", "p95", "se_binom",
                                                   "trials", "n_images", "digital"}]
    rows = []
    for (_, a), (_, b) in zip(cpu.iterrows(), dev.iterrows()):
        se = math.hypot(a["std"] / math.sqrt(a["trials"]), b["std"] / math.sqrt(b["trials"]))
        diff = b["mean"] - a["mean"]
        rows.append({**{k: a[k] for k in labels}, "cpu": round(a["mean"], 4), "device": round(b["mean"], 4),
                     "diff": round(diff, 4), "se": round(se, 4),
                     "agree_3se": bool(abs(diff) <= 3 * max(se, 1 / a["n_images"]))})
    return rows


def quickstart(device, size, deadline, summary):
    from mcsim.models import load_model
    from mcsim.specs import ModelSpec

    t = time.perf_counter()
    load_model(ModelSpec(name="builtin:mnist-cnn"))  # trains and caches it once, before the workers need it
    print(f"# builtin:mnist-cnn ready in {time.perf_counter() - t:.1f} s", flush=True)
    runs = [("cpu", "cpu"), (device.type if device.type != "cpu" else "cpu (2nd run)", device.type)]
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="mcsim-gpu-") as tmp:
        for i, (label, dev) in enumerate(runs):
            t = time.perf_counter()
            ds = run_scenario(_scenario(Path(tmp), dev, size, i), progress=False, overwrite=True,
                              workers=1 if dev == "cuda" else None)
            seconds[label] = round(time.perf_counter() - t, 1)
            results[label] = summarize(ds, metrics=("top1",))
            print(f"# quickstart on {label}: {seconds[label]} s", flush=True)
    (a, cpu), (b, dev) = results.items()
    rows = _compare(cpu, dev)
    summary["quickstart"] = {"seconds": seconds, "devices": [a, b], "points": rows}
    for r in rows:
        print(json.dumps(r), flush=True)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|, on the CPU in float64."""
    a, ref = a.detach().cpu().double(), ref.detach().cpu().double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


@torch.no_grad()
def physics(device, size, deadline, summary):
    from mcsim import convert
    from mcsim.engine import rng
    from mcsim.physics.parasitics import column_transfer, gated_column_currents

    out = summary.setdefault("physics", {})

    def report(name, value, bound):
        out[name] = {"value": value, "bound": bound, "ok": value <= bound}
        print(json.dumps({name: out[name]}), flush=True)

    # Ideal hardware (docs/physics.md section 10): the analog model is the digital one.
    wl = engine.workload(size["model"])
    x = torch.randn(4, *wl.shape, generator=torch.Generator().manual_seed(0))
    ref = wl.model.double()(x.double())
    wl.model.float()
    report("ideal_digital_forward_rel", _rel(wl.model.to(device)(x.to(device)), ref), 1e-2)
    ideal = Hardware(weight_bits=None, input_bits=None, adc={"bits": None})
    for mapping in ("differential", "offset"):
        analog = convert(wl.model, ideal.model_copy(update={"mapping": mapping}), trials=2, seed=3, device=device)
        report(f"ideal_analog_{mapping}_rel", _rel(analog(x.to(device)), ref.expand(2, -1, -1)), 2e-5)
        del analog
    # The bench's configs without device errors (random weights amplify errors into garbage; the
    # chips themselves are device-independent): the logits differ only where a rounding lands an
    # ADC code on the other side of a threshold, one LSB of the last layer's ADC is ~1% of the logits.
    xc = torch.randn(8, *wl.shape, generator=torch.Generator().manual_seed(2))
    for name in RATIO_CONFIGS:
        if time.monotonic() > deadline:
            break
        logits, hw = [], Hardware(**{**engine.CONFIGS[name], "error": {"model": "none"}})
        for dev in ("cpu", device):
            analog = convert(wl.model.to(dev), hw, trials=1, seed=5, device=dev)
            analog.calibrate([xc])
            logits.append(analog(x[:2]).cpu())
            del analog
        report(f"cpu_vs_device_{name}_no_errors_rel", _rel(logits[1], logits[0]), 5e-2)
    wl.model.to(device)
    # Gated rows (section 8): the tree on the device against the compiled scan on the CPU, float64.
    g = torch.Generator().manual_seed(1)
    G = torch.rand(1152, 64, generator=g, dtype=torch.float64)
    for signed in (False, True):
        u = (torch.rand(256, 1152, generator=g) < 0.3).to(torch.int8)
        if signed:
            u = u * (torch.randint(0, 2, u.shape, generator=g, dtype=torch.int8) * 2 - 1)
        for rp in (1e-4, 1e-2):
            cpu = gated_column_currents(G, u, rp, signed=signed, method="scan")
            dev = gated_column_currents(G.to(device), u.to(device), rp, signed=signed, method="tree")
            report(f"gated_tree_vs_cpu_scan_{'signed' if signed else 'unsigned'}_rp{rp:g}_rel", _rel(dev, cpu), 1e-10)
    # Voltage-driven rows (section 8): the column transfer on the device against the CPU's.
    report("driven_column_transfer_rel", _rel(column_transfer(G.to(device), 1e-3), column_transfer(G, 1e-3)), 1e-10)
    # Read noise (section 9): counter-based normals, element for element.
    keys = rng.derive(7, torch.arange(64))
    a, b = rng.normal(keys, 100_000), rng.normal(keys.to(device), 100_000).cpu()
    report("read_noise_normals_differing", int((a != b).sum()), 64 * 100_000 * 1e-6)
    if time.monotonic() > deadline:
        print("# physics: past its share of the time budget", flush=True)


def gated(device, size, deadline, summary):
    """Gated rows (docs/physics.md section 8) on the device: the built-in CNN, bit-serial inputs with an
    ADC per bit, against the same config without parasitics (as ``bench/engine.py`` measures it)."""
    configs = ["c_bitserial_adc_per_bit", "p_gated_bitserial_digital"]
    rows = engine.bench("mnist-cnn", configs, 8, size["g_batch"], device, 3, deadline=deadline)
    summary["gated"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


@torch.no_grad()
def profile(device, size, deadline, summary):
    """Where one steady pass of each bench config spends its time: the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    wl = engine.workload(size["model"])
    wl.model = wl.model.to(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    out = summary.setdefault("profile", {})
    for name in RATIO_CONFIGS:
        if time.monotonic() > deadline:
            break
        analog = engine.prepared(wl.model, Hardware(**engine.CONFIGS[name]), size["trials"], wl.shape,
                                 size["batch"], device)
        x = torch.randn(size["batch"], *wl.shape, device=device)
        engine.timed(lambda: analog(x), device)  # programs the chips
        with torch_profile(activities=activities) as prof:
            analog(x)
            if cuda:
                torch.cuda.synchronize(device)
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60)
        print(f"\n# {wl.name} {name}: one pass, batch {size['batch']}, T={size['trials']}\n{table}", flush=True)
        out[name] = table
        del analog


SECTIONS = {"overheads": overheads, "programming": programming, "quickstart": quickstart, "physics": physics,
            "profile": profile, "gated": gated}


# ------------------------------------------------------------------ summary
def _print_summary(summary, device, size):
    print("\n================ summary ================")
    print(f"device {summary['device']}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{summary['elapsed_s']} s of a {summary['budget_s']} s budget")
    rows = summary.get("overheads", [])
    if rows:
        print(f"\n{size['model']}, batch {size['batch']}, T={size['trials']}")
        print(engine.table(rows))
        for r in rows:
            goal = f" (goal >= {THROUGHPUT_GOAL:.0f})" if r["config"] == "a_differential_adc8" else ""
            print(f"  {r['config']:<26} {r['image_chips_per_second']:>9} image-chips/s{goal}, "
                  f"peak GPU {r.get('peak_gpu_gib', 'n/a')} GiB")
    if summary.get("gated"):
        print("\ngated rows, built-in CNN:")
        print(engine.table(summary["gated"]))
    prog = summary.get("programming_seconds_per_chip")
    if prog:
        print("\nprogramming one chip (fresh T=1 model, programming pass minus steady pass, one image):")
        for k, v in prog.items():
            print(f"  {k:<26} {v} s")
    q = summary.get("quickstart")
    if q:
        a, b = q["devices"]
        print(f"\nquickstart top-1, {a} vs {b} ({q['seconds']}):")
        for r in q["points"]:
            point = ", ".join(f"{k}={v}" for k, v in r.items() if k not in {"cpu", "device", "diff", "se", "agree_3se"})
            print(f"  {point:<40} {r['cpu']:.4f} {r['device']:.4f}  diff {r['diff']:+.4f}  "
                  f"SE {r['se']:.4f}  {'agree' if r['agree_3se'] else 'DISAGREE'}")
    phys = summary.get("physics")
    if phys:
        print("\nphysics on the device against CPU references (value <= bound):")
        for k, v in phys.items():
            print(f"  {k:<48} {v['value']:<12.3g} {v['bound']:<8.1g} {'ok' if v['ok'] else 'OFF'}")
    if summary["failed"]:
        print(f"\nsections that failed or were cut: {summary['failed']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny model and sizes (a smoke test of the script)")
    p.add_argument("--budget", type=float, default=270.0, help="hard time guard, seconds")
    p.add_argument("--grouped", action="store_true",
                   help="one grouped convolution for all chips on CUDA too, as on the CPU (to compare with "
                        "the default: one call per chip, mcsim.engine.conv.chipwise_conv); this process only, "
                        "the quickstart's workers keep the default")
    p.add_argument("--sections", nargs="+", default=["overheads", "programming", "quickstart"], choices=list(SECTIONS))
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: torch sees no CUDA GPU here, nothing to measure "
              "(run it on a GPU machine, or `python bench/gpu.py --device cpu --quick` to exercise it).")
        return 0
    if a.grouped:
        import mcsim.engine.conv

        mcsim.engine.conv._CHIPWISE_DEVICES = set()
    start = time.monotonic()
    device = torch.device(a.device)
    size = SIZES["quick" if a.quick else "full"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    summary = {"device": name, "budget_s": a.budget, "failed": []}
    print(f"# {name}; torch {torch.__version__}; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
          f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32} (mcsim's passes: IEEE float32); "
          f"convolutions on CUDA: {'one grouped call' if a.grouped else 'one call per chip'}", flush=True)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(a.budget))
    # Soft deadlines: the overheads get ~50% of the budget, programming up to 60%; every other section the rest.
    share = {"overheads": 0.5, "programming": 0.6}
    cpu0 = engine.cpu_times()
    try:
        for s in a.sections:
            print(f"\n---- {s}", flush=True)
            try:
                SECTIONS[s](device, size, start + share.get(s, 1.0) * a.budget, summary)
            except OutOfTime:
                raise
            except Exception:
                traceback.print_exc()
                summary["failed"].append(s)
    except OutOfTime:
        print(f"\n!! time guard: {a.budget} s reached, stopping here", flush=True)
        summary["failed"].append(f"{s} (time)")
    finally:
        signal.alarm(0)
    summary["elapsed_s"] = round(time.monotonic() - start, 1)
    summary["cpu_time"] = engine.cpu_line(cpu0)
    _print_summary(summary, device, size)
    print(f"\nCPU time of this process: {json.dumps(summary['cpu_time'])}")
    print(json.dumps({"gpu_check": summary}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
