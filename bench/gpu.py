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
6. gated: gated rows' cost over the same config without parasitics, the built-in CNN at batch 64,
   T=8 (last in the default run: it gets what time is left);
7. study: one study-scale scenario end to end through the CLI (``mcsim run``, a subprocess): a
   generated ImageNet-shaped ImageFolder (JPEG files at ImageNet's sizes, 1,000 classes, two
   images per class, made on the spot), torchvision ResNet50 with random weights, config (a), T=16,
   two sweep points; data loading, decoding and the store are in the measurement. Reports the wall
   time, the image-chips per second over the wall time and over the evaluation phase, and the GPU
   busy fraction: the GPU's utilization.gpu (the share of each sample period in which a kernel
   ran; ``torch.cuda.utilization()``, else ``nvidia-smi``) sampled every 200 ms over the run,
   averaged.

One command, one GPU, under 9 minutes (``--budget``, default 500 s: a hard time guard that stops
the run and prints what it has; each section prints its own traceback on failure and the others
still run)::

    python bench/gpu.py                      # overheads, programming, study, quickstart, gated
    python bench/gpu.py --sections overheads --grouped --budget 140   # the old chip-grouped convolution
    python bench/gpu.py --sections physics profile --budget 150       # checks against the CPU, profile

A CUDA run appends its figures to ``docs/gpu.md`` as a table (device, versions, date, every
figure; ``--docs PATH`` to write elsewhere, ``--docs ''`` not at all). Without CUDA it says so and
exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
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
SIZES = {  # what each mode measures; s_*: the study section (classes x per-class images, T, model)
    "full": dict(model="resnet50-224", batch=64, trials=16, repeat=5, limit=500, q_trials=16, calib=500, g_batch=64,
                 s_classes=1000, s_per_class=2, s_trials=16, s_model="resnet50", s_batch=100, s_full_size=True),
    "quick": dict(model="resnet18-32", batch=2, trials=2, repeat=2, limit=100, q_trials=4, calib=100, g_batch=8,
                  s_classes=4, s_per_class=2, s_trials=2, s_model="squeezenet1_1", s_batch=8, s_full_size=False),
}
#: ImageNet's common image sizes (width, height): most of val is 500 x 375 or 375 x 500, then 500 x 333.
IMAGENET_SIZES = [(500, 375), (375, 500), (500, 333), (500, 400), (333, 500), (500, 500), (640, 480)]


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


def _jpeg(job) -> None:
    """One JPEG of an ImageNet-like folder: smooth random content (JPEG sizes like photos'), seeded."""
    import numpy as np
    from PIL import Image

    path, (w, h), seed = job
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    noise = g.integers(-12, 13, (h, w, 3))
    Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def imagenet_folder(root: Path, classes: int, per_class: int, full_size: bool = True) -> int:
    """An ImageNet-shaped ImageFolder under ``root``: ``val/`` with ``per_class`` images in each of
    ``classes`` wnid-like folders and ``train/`` with one image per class (calibration). Returns
    the number of val images. ``full_size``: ImageNet's sizes, else 64 x 48 (a smoke test)."""
    jobs = []
    for split, n in (("val", per_class), ("train", 1)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed = (c * 16 + i) * 2 + (split == "train")
                size = IMAGENET_SIZES[seed % len(IMAGENET_SIZES)] if full_size else (64, 48)
                jobs.append((folder / f"{split}_{c:05d}_{i}.JPEG", size, seed))
    with ProcessPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
        list(pool.map(_jpeg, jobs, chunksize=64))
    return classes * per_class


class GpuSampler:
    """The GPU's utilization.gpu (the share of the driver's last sample period in which a kernel
    ran), sampled every ``period`` s in a thread while in use (``with``): ``torch.cuda.utilization()``
    where pynvml is installed, else one ``nvidia-smi`` query per sample; :attr:`busy` is their mean / 100."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples, self.how = period, [], None
        self._stop = threading.Event()

    def _sample(self):
        try:
            value = torch.cuda.utilization()
            self.how = "torch.cuda.utilization() (NVML)"
            return value
        except Exception:  # noqa: BLE001 - no pynvml: ask nvidia-smi
            index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  f"--id={index}"], capture_output=True, text=True, timeout=5).stdout.strip()
            self.how = "nvidia-smi utilization.gpu"
            return int(out) if out.isdigit() else None

    def _run(self):
        while not self._stop.wait(self.period):
            try:
                value = self._sample()
            except (OSError, subprocess.SubprocessError):
                return  # neither NVML nor nvidia-smi: no samples, busy is None
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def busy(self):
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def study(device, size, deadline, summary):
    """One study-scale scenario end to end through `mcsim run` (a subprocess) on a generated
    ImageNet-shaped folder; wall time, image-chips/s and the GPU's busy fraction."""
    from mcsim.runner.store import inspect_store

    with tempfile.TemporaryDirectory(prefix="mcsim-study-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        n = imagenet_folder(tmp / "imagenet", size["s_classes"], size["s_per_class"], size["s_full_size"])
        made = round(time.perf_counter() - t, 1)
        print(f"# study: {n} val images of {size['s_classes']} classes generated in {made} s", flush=True)
        points = [0.02, 0.05]
        sc = {"name": "gpu-study", "seed": 1, "model": {"name": f"torchvision:{size['s_model']}"},
              "data": {"name": "imagenet", "root": str(tmp / "imagenet"), "split": "val", "batch_size": size["s_batch"],
                       "calibration": {"split": "train", "count": min(100, size["s_classes"])},
                       **({} if size["s_full_size"] else {"resize": 36, "image_size": 32})},
              "hardware": {**engine.CONFIGS["a_differential_adc8"], "error": {"model": "proportional", "sigma": 0.02}},
              "sweep": {"grid": {"hardware.error.sigma": points}},
              "trials": size["s_trials"],
              "execution": {"shard_images": 500, "trials_per_task": size["s_trials"], "device": device.type,
                            **({"workers": 1} if device.type == "cuda" else {})},
              "output": str(tmp / "study.zarr")}
        path = tmp / "study.yaml"
        path.write_text(yaml.safe_dump(sc))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "mcsim", "run", str(path)]  # its progress lines time the evaluation phase
        sampler = GpuSampler() if device.type == "cuda" else None
        t = time.perf_counter()
        with sampler or _nothing():
            out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                 timeout=max(30.0, deadline - time.monotonic() + 60))
        wall = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError(f"mcsim run exited {out.returncode}: {out.stderr[-2000:]}")
        run = inspect_store(sc["output"]).attrs["runs"][-1]
        chips = n * size["s_trials"] * len(points)
        row = {"images": n, "classes": size["s_classes"], "model": size["s_model"], "trials": size["s_trials"],
               "points": len(points), "image_chips": chips, "generate_s": made, "wall_s": round(wall, 1),
               "image_chips_per_s_wall": round(chips / wall, 1),
               "run": {k: run.get(k) for k in ("workers", "threads", "device", "computed", "status")}}
        ends = re.findall(r"evaluating: (\d+)/\1 tasks.*?, (\d+) s$", out.stdout + out.stderr, re.M)
        if ends and int(ends[-1][1]) > 0:  # the phase's last progress line: its whole seconds
            row["evaluate_s"] = int(ends[-1][1])
            row["image_chips_per_s_evaluate"] = round(chips / int(ends[-1][1]), 1)
        if sampler is not None:
            row.update(gpu_busy=sampler.busy, gpu_samples=len(sampler.samples), gpu_busy_how=sampler.how)
        summary["study"] = row
        print(json.dumps(row, default=str), flush=True)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


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


SECTIONS = {"overheads": overheads, "programming": programming, "study": study, "quickstart": quickstart,
            "gated": gated, "physics": physics, "profile": profile}
DEFAULT_SECTIONS = ["overheads", "programming", "study", "quickstart", "gated"]
#: Soft deadlines, as shares of the budget: a section past its share skips what it has left.
SHARE = {"overheads": 0.3, "programming": 0.36, "study": 0.7, "quickstart": 0.85}


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
    st = summary.get("study")
    if st:
        print(f"\nstudy end to end through `mcsim run`: {st['images']} JPEGs, {st['model']}, T={st['trials']}, "
              f"{st['points']} points: {st['wall_s']} s wall, {st['image_chips_per_s_wall']} image-chips/s over it, "
              f"{st.get('image_chips_per_s_evaluate', 'n/a')} over the evaluation phase; GPU busy "
              f"{st.get('gpu_busy', 'n/a')}")
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


def figures(summary) -> list[tuple[str, object, str]]:
    """Every figure of a run as ``(figure, value, target)`` rows (the targets: issue 24, one
    H100-class GPU)."""
    targets = {"a_differential_adc8": "<= 1.5", "b_offset_4slices": "<= 6", "c_bitserial_adc_per_bit": "<= 12"}
    rows = []
    for r in summary.get("overheads", []):
        o = r["overhead_ratio"]
        rows.append((f"{r['model']} {r['config']}: analog / digital time per image", f"{o['median']} [{o['min']}-{o['max']}]",
                     targets.get(r["config"], "")))
        rows.append((f"{r['model']} {r['config']}: image-chips/s", r["image_chips_per_second"],
                     f">= {THROUGHPUT_GOAL:.0f}" if r["config"] == "a_differential_adc8" else ""))
        if "peak_gpu_gib" in r:
            rows.append((f"{r['model']} {r['config']}: peak GPU memory, GiB", r["peak_gpu_gib"], ""))
    for k, v in summary.get("programming_seconds_per_chip", {}).items():
        rows.append((f"{k}: seconds to program one chip", v, ""))
    for r in summary.get("gated", []):
        o = r["overhead_ratio"]
        rows.append((f"{r['model']} {r['config']}: analog / digital time per image", f"{o['median']} [{o['min']}-{o['max']}]",
                     "<= 30x config (c)" if "gated" in r["config"] else ""))
    st = summary.get("study")
    if st:
        what = f"study end to end ({st['images']} JPEGs, {st['classes']} classes, {st['model']}, T={st['trials']}, " \
               f"{st['points']} points, `mcsim run`)"
        rows += [(f"{what}: wall time, s", st["wall_s"], ""),
                 (f"{what}: image-chips/s over the wall time", st["image_chips_per_s_wall"], "")]
        if "image_chips_per_s_evaluate" in st:
            rows.append((f"{what}: image-chips/s over the evaluation phase", st["image_chips_per_s_evaluate"], ">= 2000"))
        if st.get("gpu_busy") is not None:
            rows.append((f"{what}: GPU busy fraction ({st['gpu_busy_how']}, {st['gpu_samples']} samples)",
                         st["gpu_busy"], ">= 0.8"))
    q = summary.get("quickstart")
    if q:
        for r in q["points"]:
            point = ", ".join(f"{k}={v}" for k, v in r.items() if k not in {"cpu", "device", "diff", "se", "agree_3se"})
            rows.append((f"quickstart top-1 {point}: {q['devices'][0]} / {q['devices'][1]}",
                         f"{r['cpu']:.4f} / {r['device']:.4f} (diff {r['diff']:+.4f}, SE {r['se']:.4f})",
                         "within 3 SE: " + ("yes" if r["agree_3se"] else "NO")))
    for k, v in summary.get("physics", {}).items():
        rows.append((f"physics {k}", f"{v['value']:.3g}", f"<= {v['bound']:.1g}"))
    return rows


def write_docs(path: Path, summary) -> None:
    """Append this run's figures to ``path`` as a markdown section with one table."""
    import mcsim

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    cuda = torch.version.cuda or "none"
    lines = [f"\n## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {summary['device']}\n",
             f"torch {torch.__version__} (CUDA {cuda}), mcsim {mcsim.__version__}{f' ({commit})' if commit else ''}, "
             f"Python {platform.python_version()}, `python bench/gpu.py {' '.join(sys.argv[1:])}`, "
             f"{summary['elapsed_s']} s" + (f"; sections failed or cut: {summary['failed']}" if summary["failed"] else "")
             + "\n", "| figure | value | target |", "|---|---|---|"]
    lines += [f"| {f} | {v} | {t} |" for f, v, t in figures(summary)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"\nwrote the figures to {path}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny model and sizes (a smoke test of the script)")
    p.add_argument("--budget", type=float, default=500.0, help="hard time guard, seconds")
    p.add_argument("--docs", default=str(ROOT / "docs" / "gpu.md"),
                   help="append the figures of a CUDA run to this markdown file ('' for none; CPU runs write "
                        "only when given explicitly)")
    p.add_argument("--grouped", action="store_true",
                   help="one grouped convolution for all chips on CUDA too, as on the CPU (to compare with "
                        "the default: one call per chip, mcsim.engine.conv.chipwise_conv); this process only, "
                        "the quickstart's workers keep the default")
    p.add_argument("--sections", nargs="+", default=DEFAULT_SECTIONS, choices=list(SECTIONS))
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
    cpu0 = engine.cpu_times()
    try:
        for s in a.sections:
            print(f"\n---- {s}", flush=True)
            try:
                SECTIONS[s](device, size, start + SHARE.get(s, 1.0) * a.budget, summary)
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
    if a.docs and (device.type == "cuda" or "--docs" in sys.argv):
        write_docs(Path(a.docs), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
