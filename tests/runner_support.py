"""Helpers of the runner, store and CLI tests: small real scenarios on the digits data set."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

REPO = Path(__file__).resolve().parents[1]

#: A small study: 2 x 2 sweep points (a grid dim and a zipped pair), programming errors and
#: read noise (so that chips and images both carry randomness), a real ADC (calibrated).
BASE = {
    "name": "tiny",
    "seed": 3,
    "model": {"name": "builtin:digits-cnn"},
    "data": {"name": "digits", "split": "test", "limit": 200, "batch_size": 50,
             "calibration": {"split": "train", "count": 100}},
    "hardware": {"mapping": "differential", "adc": {"bits": 6},
                 "error": {"model": "proportional", "sigma": 0.1},
                 "read_noise": {"model": "independent", "sigma": 0.05}},
    "sweep": {"grid": {"hardware.error.sigma": [0.0, 0.3]},
              "zip": {"hardware.mapping": ["differential", "offset"], "hardware.adc.bits": [6, 8]}},
    "trials": 6,
    "execution": {"shard_images": 100, "trials_per_task": 3, "workers": 1},
}

RESULT_VARS = ["top1", "top5", "correct_top1", "correct_top5", "n_images", "digital_top1", "digital_top5",
               "x_range", "input_signed", "adc_lo", "adc_hi", "analog"]


def merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "sweep":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_scenario(directory: Path, name: str = "scenario.yaml", output: str | Path | None = None,
                   **changes) -> Path:
    """Write ``BASE`` with ``changes`` (nested dicts merged) to ``directory/name``."""
    data = merge(BASE, changes)
    data["output"] = str(output if output is not None else directory / "out.zarr")
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def results_only(ds: xr.Dataset) -> xr.Dataset:
    """The result variables, without the run's attributes (times, run log)."""
    out = ds[RESULT_VARS]
    return out.drop_attrs() if hasattr(out, "drop_attrs") else out.assign_attrs({})


def mcsim_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mcsim", *args]


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m mcsim ARGS`` in a subprocess (the environment of the tests)."""
    return subprocess.run(mcsim_cmd(*args), capture_output=True, text=True, timeout=timeout, **kwargs)


def ledger_count(path: Path | str) -> tuple[int, int]:
    """(evaluation tasks recorded, total) in a store's ledger; (0, 0) while it does not exist."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        if group.attrs.get("state") not in ("ready", "complete"):
            return 0, 0
        done = np.asarray(group["ledger"]["done"][...])
    except Exception:  # noqa: BLE001 - not there yet
        return 0, 0
    return int(done.sum()), int(done.size)


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    end = time.time() + timeout
    while time.time() < end:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def kill_mid_run(scenario: Path | str, store: Path | str, tasks: int = 3, timeout: float = 240) -> list[int]:
    """Start ``mcsim run scenario`` in a process, SIGKILL it once ``tasks`` tasks are in its ledger (or it
    ended, or ``timeout`` passed), and return the worker processes it had then."""
    proc = subprocess.Popen(mcsim_cmd("run", str(scenario), "--quiet"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            done, _ = ledger_count(store)
            if done >= tasks or proc.poll() is not None:
                break
            time.sleep(0.02)
        workers = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return workers
