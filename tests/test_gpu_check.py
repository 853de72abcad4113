"""The GPU check's CPU side (bench/gpu.py): without CUDA it says so and exits 0; `--device cpu
--quick` runs the study section end to end through `mcsim run` on a generated ImageNet-shaped
folder and writes its table. The data path of study-scale runs (threaded decoding, the next batch
decoding in the background, decoded once per shard) and one worker process per GPU."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from mcsim.runner.local import LocalExecutor
from mcsim.runner.worker import Worker
from mcsim.scenario import load_scenario
from runner_support import REPO, write_scenario

sys.path.insert(0, str(REPO / "bench"))
import gpu  # noqa: E402

GPU_PY = str(REPO / "bench" / "gpu.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_without_cuda_the_gpu_check_says_so_and_exits_0():
    out = subprocess.run([sys.executable, GPU_PY], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "sees no CUDA GPU here" in out.stdout, out.stdout + out.stderr


@pytest.mark.slow  # `mcsim run` in a subprocess with its worker process: about 20 s on a quiet machine
def test_the_quick_cpu_study_section_runs_mcsim_end_to_end_and_writes_its_table(tmp_path):
    docs = tmp_path / "gpu.md"
    out = subprocess.run([sys.executable, GPU_PY, "--device", "cpu", "--quick", "--sections", "study",
                          "--docs", str(docs)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"failed": []' in out.stdout, out.stdout
    table = docs.read_text()
    assert "| figure | value | target |" in table and ", cpu\n" in table
    assert "study end to end (8 JPEGs, 4 classes, squeezenet1_1, T=2, 2 points, `mcsim run`): wall time, s" in table


def _folder_scenario(tmp_path, **data):
    n = gpu.imagenet_folder(tmp_path / "im", classes=3, per_class=4, full_size=False)
    path = write_scenario(tmp_path, data={"name": "imagenet", "root": str(tmp_path / "im"), "split": "val",
                                          "batch_size": 5, "resize": 36, "image_size": 32, "limit": None,
                                          "calibration": {"split": "train", "count": 3}, **data},
                          model={"name": "torchvision:squeezenet1_1"})
    return load_scenario(path), n


def test_an_image_folder_decodes_in_threads_once_per_shard_and_gives_the_same_images(tmp_path):
    sc, n = _folder_scenario(tmp_path)
    worker = Worker(sc, threads=1)
    assert worker._decode is not None and n == 12 == worker.n_images
    calls, get = [], worker.dataset.__getitem__

    class Counting:  # the worker's data set, counting the images it decodes
        def __getitem__(self, i):
            calls.append(i)
            return get(i)

    worker.dataset = Counting()
    first = [(b0, x.clone(), y) for b0, (x, y) in worker.batches(0, 12)]
    assert [b0 for b0, *_ in first] == [0, 5, 10] and sorted(calls) == list(range(12))
    for b0, x, y in first:  # the images of a plain, sequential decode
        items = [get(i) for i in range(b0, min(b0 + 5, 12))]
        assert torch.equal(x, torch.stack([it[0] for it in items]))
        assert y.tolist() == [it[1] for it in items]
    again = [(b0, x, y) for b0, (x, y) in worker.batches(0, 12)]  # the next chips: no decoding
    assert len(calls) == 12 and all(torch.equal(a[1], b[1]) for a, b in zip(first, again))


def test_the_digits_data_set_loads_without_threads(tmp_path):
    assert Worker(load_scenario(write_scenario(tmp_path)), threads=1)._decode is None


def test_on_cuda_one_worker_process_per_gpu_each_with_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sc = load_scenario(write_scenario(tmp_path, execution={"device": "cuda", "workers": None}))
    ex = LocalExecutor(sc)
    assert ex.workers == 2 and [ex.worker_env(i)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
    half = load_scenario(write_scenario(tmp_path, name="half.yaml",
                                        execution={"device": "cuda", "workers": None, "gpus_per_task": 0.5}))
    assert LocalExecutor(half).workers == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert LocalExecutor(sc).worker_env(1)["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    cpu = load_scenario(write_scenario(tmp_path, name="cpu.yaml", execution={"device": "cpu"}))
    assert LocalExecutor(cpu).gpus == [] and "CUDA_VISIBLE_DEVICES" not in LocalExecutor(cpu).worker_env(0)


def test_the_gpu_sampler_averages_the_utilization_it_samples(monkeypatch):
    import time

    monkeypatch.setattr(torch.cuda, "utilization", lambda *args: 40)
    with gpu.GpuSampler(period=0.01) as sampler:
        time.sleep(0.2)
    assert sampler.samples and sampler.busy == 0.4 and sampler.how.startswith("torch.cuda.utilization")
