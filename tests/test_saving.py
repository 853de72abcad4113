"""AnalogModel.save and mcsim.load (docs/saving.md): the same chips after a round trip, in a fresh
process; files from another version, damaged or foreign files, uncalibrated models, changed tables
and networks that no longer rebuild are refused with a clear message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import mcsim
from mcsim.engine.saving import SavedModelError
from mcsim.models import ModelSpec, digits_cnn, digits_vit, load_model, randomized

ROOT = Path(__file__).resolve().parents[1]
TABLE = "# gmax: 25 uS\nG,mu,sigma,sigma_read\n0.25,0.01,0.30,0.05\n5,-0.02,0.60,0.10\n25,0.0,0.40,0.20\n"
EFFECTS = {  # every kind of chip state: programming, read noise, slices, drift, faults, variation, ADC
    "error": {"model": "proportional", "sigma": 0.05}, "read_noise": {"model": "proportional", "sigma": 0.03},
    "slices": 2, "drift": {"time_s": 1e4, "nu_std": 0.02}, "faults": {"stuck_off": 0.01, "stuck_on": 0.005},
    "variation": {"chip": 0.02, "array": 0.01, "column": 0.01}, "adc": {"bits": 8, "offset_lsb": 0.3},
    "layers": {"7": {"adc": {"bits": 6}}},
}


def _converted(net, hardware, shape, trials=3, seed=11, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analog = mcsim.convert(net, hardware, trials=trials, seed=seed, device="cpu", **kw)
    g = torch.Generator().manual_seed(0)
    analog.calibrate([torch.rand(16, *shape, generator=g)])
    return analog, torch.rand(4, *shape, generator=g)


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mcsim.load(path, device="cpu")


CHILD = """
import sys, warnings, torch, mcsim
warnings.simplefilter("ignore")
cases = torch.load(sys.argv[1], weights_only=True)
torch.save({k: mcsim.load(k, device="cpu")(x) for k, x in cases.items()}, sys.argv[2])
"""


def test_a_round_trip_in_a_fresh_process_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    squeeze = randomized(load_model(ModelSpec(name="torchvision:squeezenet1_1", kwargs={"num_classes": 10})))
    models = {  # a built-in CNN with every effect, a torchvision SqueezeNet (spec from load_model), a ViT
        "cnn": (digits_cnn(), EFFECTS, (1, 8, 8), "builtin:digits-cnn"),
        "squeezenet": (squeeze, {"error": {"model": "proportional", "sigma": 0.05}}, (3, 24, 24), None),
        "vit": (randomized(digits_vit()), {"read_noise": {"model": "proportional", "sigma": 0.05}}, (1, 8, 8),
                "builtin:digits-vit"),
    }
    cases, expected = {}, {}
    for name, (net, hw, shape, spec) in models.items():
        analog, x = _converted(net, hw, shape, trials=2 if name == "squeezenet" else 3)
        analog(x)  # a call before saving: the loaded model goes on from images_seen
        path = str(tmp_path / f"{name}.mcsim")
        analog.save(path, model=spec)
        cases[path], expected[path] = x, analog(x)
    torch.save(cases, tmp_path / "cases.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")],
                   check=True, env=env, cwd=tmp_path)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    for path in cases:
        assert torch.equal(got[path], expected[path]), path
        assert not torch.equal(expected[path][0], expected[path][1]), path  # the chips differ


def test_the_loaded_model_has_the_saved_settings(tmp_path):
    analog, x = _converted(digits_cnn(), EFFECTS, (1, 8, 8), trials=range(5, 8), seed=3)
    analog.save(tmp_path / "m.mcsim", model={"factory": "mcsim.models:digits_cnn"})
    loaded = _load(tmp_path / "m.mcsim")
    assert loaded.hardware == analog.hardware and loaded.layer_hardware == analog.layer_hardware
    assert loaded.chips.tolist() == [5, 6, 7] and loaded.ctx.seed == 3
    assert loaded.calibration() == analog.calibration()
    assert torch.equal(loaded(x), analog(x))


def _patched(path, **meta_updates):
    blob = torch.load(path, weights_only=True)
    blob["meta"] = json.dumps({**json.loads(blob["meta"]), **meta_updates})
    torch.save(blob, path)


def test_another_version_a_damaged_or_a_foreign_file_is_refused(tmp_path):
    analog, _ = _converted(digits_cnn(), {}, (1, 8, 8))
    good = tmp_path / "m.mcsim"
    analog.save(good, model="builtin:digits-cnn")
    data = good.read_bytes()
    for name, meta, message in [("mcsim", {"mcsim": "0.0.1"}, "saved by mcsim 0.0.1 with torch"),
                                ("torch", {"torch": "1.13.0"}, "with torch 1.13.0; this is mcsim"),
                                ("format", {"format": "something else"}, "format 'something else'")]:
        path = tmp_path / f"{name}.mcsim"
        path.write_bytes(data)
        _patched(path, **meta)
        with pytest.raises(SavedModelError, match=message):
            _load(path)
    (tmp_path / "cut.mcsim").write_bytes(data[: len(data) // 2])
    with pytest.raises(SavedModelError, match="cut.mcsim: not a saved mcsim model, or a damaged one"):
        _load(tmp_path / "cut.mcsim")
    blob = torch.load(good, weights_only=True)
    blob["state"]["0.weight"][0, 0, 0, 0] += 1e-3
    torch.save(blob, tmp_path / "edited.mcsim")
    with pytest.raises(SavedModelError, match="does not match its recorded sha256"):
        _load(tmp_path / "edited.mcsim")
    torch.save(digits_cnn().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(SavedModelError, match="no mcsim header"):
        _load(tmp_path / "weights.pt")
    with pytest.raises(SavedModelError, match="no such file"):
        _load(tmp_path / "nothing.mcsim")
    assert issubclass(SavedModelError, mcsim.errors.InputError)  # the CLI's exit 2


def test_an_uncalibrated_model_is_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analog = mcsim.convert(digits_cnn(), {"adc": {"bits": 6}}, trials=2, device="cpu")
        ideal = mcsim.convert(digits_cnn(), {"input_bits": None, "adc": {"bits": None}}, trials=2, device="cpu")
    with pytest.raises(SavedModelError, match=r"not calibrated \(layers 0, 3, 7\): call .calibrate\(\)"):
        analog.save(tmp_path / "m.mcsim", model="builtin:digits-cnn")
    assert not (tmp_path / "m.mcsim").exists()
    ideal.save(tmp_path / "ideal.mcsim", model="builtin:digits-cnn")  # nothing to calibrate
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(_load(tmp_path / "ideal.mcsim")(x), ideal(x))


def test_a_table_is_read_from_its_saved_path_and_refused_when_changed(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    Path("cell.csv").write_text(TABLE)
    hw = {"error": {"model": "table", "file": "cell.csv"},
          "layers": {"7": {"read_noise": {"model": "table", "file": "cell.csv"}}}}
    analog, x = _converted(digits_cnn(), hw, (1, 8, 8))
    analog.save(tmp_path / "m.mcsim", model="builtin:digits-cnn")
    expected = analog(x)  # the model itself reads "cell.csv" from the current directory
    monkeypatch.chdir(tmp_path)  # the saved file holds the table's absolute path
    assert torch.equal(_load(tmp_path / "m.mcsim")(x), expected)
    (tmp_path / "a" / "cell.csv").write_text(TABLE.replace("0.60", "0.65"))
    with pytest.raises(SavedModelError, match=r"m.mcsim: its hardware no longer loads:(.|\n)*error.sha256: the table "
                                              r"'.*a/cell.csv' changed"):
        _load(tmp_path / "m.mcsim")
    (tmp_path / "a" / "cell.csv").unlink()
    with pytest.raises(SavedModelError, match=r"its hardware no longer loads:(.|\n)*error.file: table '.*a/cell.csv' "
                                              "not found"):
        _load(tmp_path / "m.mcsim")


def test_a_network_mcsim_cannot_rebuild_is_refused(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    analog, _ = _converted(net, {}, (1, 8, 8))
    with pytest.raises(SavedModelError, match="cannot tell how to rebuild this network: pass model="):
        analog.save(tmp_path / "m.mcsim")
    with pytest.raises(SavedModelError, match="model='nomodule' is not a model spec"):
        analog.save(tmp_path / "m.mcsim", model="nomodule")
    analog.save(tmp_path / "m.mcsim", model="mcsim.models:digits_cnn")  # the wrong factory: found at load
    with pytest.raises(SavedModelError, match=r"rebuilt from mcsim.models:digits_cnn is not the one saved: module "
                                              r"'0': class 'torch.nn.modules.flatten.Flatten' saved"):
        _load(tmp_path / "m.mcsim")


class _WithExtraState(nn.Sequential):
    def get_extra_state(self):
        return {"note": "not a tensor"}

    def set_extra_state(self, state):
        pass


def test_a_state_that_is_not_only_tensors_is_refused(tmp_path):
    analog, _ = _converted(_WithExtraState(nn.Flatten(), nn.Linear(64, 10)), {}, (1, 8, 8))
    with pytest.raises(SavedModelError, match=r"entries that are not tensors \(_extra_state\)"):
        analog.save(tmp_path / "m.mcsim", model="tests:nothing")
