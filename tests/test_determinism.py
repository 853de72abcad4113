"""The determinism contract at the scale where it broke: a chip is the same chip however the work
is cut (alone or among others, any batch size, 1 or 2 threads, any trial block of a scenario)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from mcsim import Hardware, convert, run_scenario

REPO = Path(__file__).resolve().parents[1]

# The reported case: ResNet18 (random weights, BN statistics randomized), 10 classes, 48x48 inputs,
# differential, 8-bit weights and inputs, proportional error 0.1, seed 7, calibrated on 6 images.
_NET = """
import torch, torchvision
def net():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m, torch.randn(6, 3, 48, 48, generator=torch.Generator().manual_seed(1))
"""
exec(_NET)  # defines net()


def _hw(adc_bits):
    return Hardware(mapping="differential", weight_bits=8, input_bits=8, adc={"bits": adc_bits},
                    error={"model": "proportional", "sigma": 0.1}, read_noise={"model": "proportional", "sigma": 0.02})


@pytest.fixture(scope="module", params=[8, None], ids=["adc8", "ideal_adc"])
def among_six(request):
    model, x = net()
    analog = convert(model, _hw(request.param), trials=6, seed=7, device="cpu")
    analog.calibrate([x])
    return model, x, request.param, analog.calibration(), analog(x, image_ids=torch.arange(6))


@pytest.mark.slow
def test_chip_alone_equals_chip_among_others(among_six):
    model, x, adc_bits, cal, full = among_six
    for chips in ([0], [2], [4], [5], [3, 1]):
        analog = convert(model, _hw(adc_bits), trials=chips, seed=7, device="cpu")
        analog.load_calibration(cal)
        assert torch.equal(analog(x, image_ids=torch.arange(6)), full[chips]), chips


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_any_batch_size_gives_the_same_logits(among_six, batch):
    model, x, adc_bits, cal, full = among_six
    analog = convert(model, _hw(adc_bits), trials=[1, 4], seed=7, device="cpu")
    analog.load_calibration(cal)
    parts = [analog(x[i : i + batch], image_ids=torch.arange(i, min(i + batch, 6))) for i in range(0, 6, batch)]
    assert torch.equal(torch.cat(parts, 1), full[[1, 4]])


@pytest.mark.slow
def test_one_or_two_threads_give_the_same_logits(among_six, tmp_path):
    model, x, adc_bits, cal, full = among_six
    torch.save(cal, tmp_path / "cal.pt")
    code = _NET + f"""
import sys
from mcsim import Hardware, convert
torch.set_num_threads(int(sys.argv[1]))
m, x = net()
hw = Hardware(mapping="differential", weight_bits=8, input_bits=8, adc={{"bits": {adc_bits}}},
              error={{"model": "proportional", "sigma": 0.1}}, read_noise={{"model": "proportional", "sigma": 0.02}})
a = convert(m, hw, trials=[0, 2, 5], seed=7, device="cpu")
a.load_calibration(torch.load({str(tmp_path / 'cal.pt')!r}))
torch.save(a(x, image_ids=torch.arange(6)), sys.argv[2])
"""
    for threads in (1, 2):
        out = tmp_path / f"out{threads}.pt"
        subprocess.run([sys.executable, "-c", code, str(threads), str(out)], check=True, timeout=600)
        assert torch.equal(torch.load(out), full[[0, 2, 5]]), threads


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_programming_draws_do_not_depend_on_the_threads_drawing_them(threads):
    from mcsim.engine import rng

    keys = rng.derive(7, torch.arange(5))
    ref = torch.stack([torch.randn(100_001, generator=torch.Generator().manual_seed(k & (2**63 - 1)))
                       for k in keys.tolist()])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.equal(rng.chip_normal(keys, 100_001, "cpu"), ref)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_quickstart_counts_do_not_depend_on_trials_per_task(tmp_path):
    """The quickstart, cut into trial blocks of 20, 5 and 1 chips: identical correct counts."""
    base = yaml.safe_load((REPO / "scenarios" / "quickstart.yaml").read_text())
    base["data"].update(limit=500)  # the quickstart's first 500 images: a shorter test, same cuts
    base["execution"].update(shard_images=250, workers=1)
    results = {}
    for per_task in (20, 5, 1):
        scenario = dict(base, execution=dict(base["execution"], trials_per_task=per_task),
                        output=str(tmp_path / f"q{per_task}.zarr"))
        path = tmp_path / f"q{per_task}.yaml"
        path.write_text(yaml.safe_dump(scenario))
        results[per_task] = run_scenario(path, progress=False)["correct_top1"].load()
    assert results[20].equals(results[5]) and results[20].equals(results[1])


@pytest.mark.slow
def test_layers_kept_digital_keep_the_contract():
    """The first and last layers kept digital run over every chip's images at once: a chip alone,
    with few images, must still see the same numbers there."""
    model, x = net()
    hw = _hw(8).model_copy(update={"analog_first_layer": False, "analog_last_layer": False})
    many = convert(model, hw, trials=4, seed=7, device="cpu")
    many.calibrate([x])
    full = many(x[:3], image_ids=torch.arange(3))
    alone = convert(model, hw, trials=[2], seed=7, device="cpu")
    alone.load_calibration(many.calibration())
    assert torch.equal(torch.cat([alone(x[i : i + 1], image_ids=[i]) for i in range(3)], 1), full[[2]])


@pytest.mark.slow
def test_trained_cnn_offset_chip_alone_equals_chip_among_twenty():
    """The case the quickstart caught: mnist-cnn's first layer (one input channel, a bias) took
    another kernel, and added its bias elsewhere in the sum, at 20 groups than at 3."""
    from workloads import mnist_cnn

    model, x, _, cal = mnist_cnn(images=250, calibration=200)
    hw = Hardware(mapping="offset", adc={"bits": 8}, error={"model": "proportional", "sigma": 0.1})
    many = convert(model, hw, trials=20, seed=123, device="cpu")
    many.calibrate([cal])
    full = many(x, image_ids=torch.arange(250))
    for chips in ([4], [0, 1, 2, 3, 4]):
        few = convert(model, hw, trials=chips, seed=123, device="cpu")
        few.load_calibration(many.calibration())
        assert torch.equal(few(x, image_ids=torch.arange(250)), full[chips]), chips
