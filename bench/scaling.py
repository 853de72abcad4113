"""Scaling benchmark: the same small scenario on 1 and N workers, local executor and Ray.

On the CPU N = 2 (one torch thread per worker). With ``--device cuda`` N is the number of GPUs
torch sees (one worker per GPU: the local executor gives each process its own
``CUDA_VISIBLE_DEVICES``, Ray one actor per GPU, ``--gpus-per-task 0.5`` two per GPU); with a
single GPU it measures 1 worker and says there is no speed-up to measure. Every run's numbers
are compared with the first run's (``same_numbers``: the top-1 counts identical).

Prints one JSON object: per executor and worker count, the wall time of the run (``wall_s``:
the whole ``driver.run``, preflight and store included), the wall time of its task phases
(``phase_s``: from all workers being ready, model and data loaded, to the last result
written; the start-up is ``startup_s``), the evaluation time
measured inside the workers (``eval_s``: the sum of the tasks' own timers), the speed-up of 2
workers over 1 (on ``phase_s`` and on ``wall_s``), and ``overhead_fraction = 1 - eval_s /
(workers * phase_s)``: the share of the workers' time spent outside model evaluation
(scheduling, serialization, writing the store, idle at the end).

    python bench/scaling.py                  # local and ray, 1 and 2 workers
    python bench/scaling.py --executors local --trials 32
    python bench/scaling.py --device cuda --model torchvision:resnet18   # 1 and one per GPU
Targets (issue 5, tasks of a few seconds): speed-up >= 1.8, overhead <= 5%.
Numbers from a machine shared with other jobs are pessimistic: they compete for the same cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

for _k, _v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("MCSIM_THREADS", "1")  # one torch thread per worker: 2 workers = 2 cores


def scenario_dict(args, output: str) -> dict:
    return {
        "name": "scaling",
        "seed": 1,
        "model": {"name": args.model},
        "data": {"name": "digits", "split": "test", "limit": args.images, "batch_size": 50,
                 "calibration": {"split": "train", "count": 100}},
        "hardware": {"mapping": "differential", "adc": {"bits": 8},
                     "error": {"model": "proportional", "sigma": 0.05},
                     "read_noise": {"model": "independent", "sigma": 0.02}},
        "sweep": {"grid": {"hardware.error.sigma": [0.0, 0.05, 0.1, 0.2][: args.points]}},
        "trials": args.trials,
        "execution": {"shard_images": args.images, "trials_per_task": args.trials // 2, "device": args.device,
                      "gpus_per_task": args.gpus_per_task},
        "output": output,
    }


def measure(kind: str, workers: int, scenario_path: Path, output: str) -> dict:
    from mcsim.runner import driver
    from mcsim.scenario import load_scenario

    sc = load_scenario(scenario_path)
    seen: dict = {"eval_s": 0.0, "tasks": 0, "task_s": []}

    def wrap(executor):
        inner_run = executor.run
        inner_enter = executor.__enter__

        def enter():
            t = time.perf_counter()
            inner_enter()
            executor.wait_ready()  # worker start-up (model and data loading) outside the phases
            seen["startup_s"] = time.perf_counter() - t
            return executor

        def run(jobs):
            start = time.perf_counter()
            for result in inner_run(jobs):
                seen["eval_s"] += result.seconds
                seen["tasks"] += 1
                if result.task.kind == "evaluate":
                    seen["task_s"].append(result.seconds)
                yield result
            seen["phase_s"] = seen.get("phase_s", 0.0) + time.perf_counter() - start
        executor.run, executor.__enter__ = run, enter
        return executor

    class Wrapped:  # a context manager around the real executor (dunder lookups skip instances)
        def __init__(self, ex):
            self.ex = wrap(ex)

        def __enter__(self):
            self.ex.__enter__()
            return self.ex

        def __exit__(self, *exc):
            self.ex.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.ex, name)

    def factory(s, n):
        if kind == "ray":
            from mcsim.runner.ray_executor import RayExecutor

            return Wrapped(RayExecutor(s, workers, address="local"))
        from mcsim.runner.local import LocalExecutor

        return Wrapped(LocalExecutor(s, workers=workers, threads=1))  # on CUDA: one GPU per process in turn

    t = time.perf_counter()
    driver.run(sc, output=output, overwrite=True, executor_factory=factory)
    wall = time.perf_counter() - t
    # the result-writing phase ends when the generator is drained: phase_s covers it (the driver
    # writes each result before asking for the next)
    overhead = 1 - seen["eval_s"] / (workers * seen["phase_s"])
    ts = seen["task_s"]
    return {"executor": kind, "workers": workers, "wall_s": round(wall, 3), "phase_s": round(seen["phase_s"], 3),
            "startup_s": round(seen.get("startup_s", 0.0), 3), "eval_s": round(seen["eval_s"], 3),
            "tasks": seen["tasks"], "eval_task_s_mean": round(sum(ts) / len(ts), 3) if ts else None,
            "overhead_fraction": round(overhead, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executors", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--images", type=int, default=300, help="evaluation images (one shard)")
    ap.add_argument("--trials", type=int, default=192, help="trials per point (two blocks: two tasks per point)")
    ap.add_argument("--points", type=int, default=4, choices=[1, 2, 3, 4], help="sweep points")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--gpus-per-task", type=float, default=1.0, help="GPUs per worker on CUDA (0.5: two per GPU)")
    ap.add_argument("--model", default="builtin:digits-cnn", help="model name (digits images, 8x8: a torchvision "
                    "model sees them as they are)")
    args = ap.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("bench/scaling.py: --device cuda, but torch sees no CUDA GPU here")
            return
        per_gpu = max(1, int(1 / args.gpus_per_task + 1e-9))
        counts = sorted({per_gpu * 1, per_gpu * torch.cuda.device_count()}) if torch.cuda.device_count() > 1 else [per_gpu]
    else:
        counts = [1, 2]

    tmp = Path(tempfile.mkdtemp(prefix="mcsim-scaling-"))
    path = tmp / "scaling.yaml"
    path.write_text(yaml.safe_dump(scenario_dict(args, str(tmp / "out.zarr")), sort_keys=False))
    from mcsim.models import load_model
    from mcsim.scenario import load_scenario

    load_model(load_scenario(path).model)  # train the built-in once, outside the timings

    from mcsim.api import open_result

    runs, first = [], None
    for kind in args.executors:
        for workers in counts:
            out = str(tmp / f"{kind}{workers}.zarr")
            runs.append(measure(kind, workers, path, out))
            counts_top1 = open_result(out)["correct_top1"].values
            first = counts_top1 if first is None else first
            runs[-1]["same_numbers"] = bool((counts_top1 == first).all())
    summary = {}
    for kind in args.executors:
        mine = [r for r in runs if r["executor"] == kind]
        one, many = mine[0], mine[-1]
        if len(mine) == 1:
            summary[kind] = {"note": f"one {args.device} device: no speed-up to measure"}
            continue
        n = many["workers"]
        summary[kind] = {f"speedup_phase_{n}_over_{one['workers']}": round(one["phase_s"] / many["phase_s"], 3),
                         f"speedup_wall_{n}_over_{one['workers']}": round(one["wall_s"] / many["wall_s"], 3),
                         f"overhead_fraction_{one['workers']}": one["overhead_fraction"],
                         f"overhead_fraction_{n}": many["overhead_fraction"],
                         "same_numbers": all(r["same_numbers"] for r in mine)}
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    print(json.dumps({"device": args.device, "scenario": scenario_dict(args, "")["execution"] | {"images": args.images,
                                                                           "trials": args.trials,
                                                                           "points": args.points},
                      "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                  "loadavg_at_end": load},
                      "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
