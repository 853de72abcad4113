"""Per-layer hardware (``hardware.layers``) and the layer sensitivity sweep (``sweep.layers``):
override resolution, names checked against the model, swept overrides, the settings recorded in
the result, and the ranking of `mcsim report` / `mcsim plot`. Real runs on the digits data set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mcsim.api import open_result, run_scenario
from mcsim.cli import app
from mcsim.engine.convert import convert, crossbar_layers
from mcsim.hardware import Hardware, LayerNameError
from mcsim.report import layer_sensitivity
from mcsim.scenario import ScenarioError, load_scenario, parse_scenario
from mcsim.sweep import LAYER_DIM, dim_name, expand, key_parts
from runner_support import BASE, write_scenario

DIGITS_LAYERS = ["0", "3", "7"]  # builtin:digits-cnn: conv, conv, linear (an nn.Sequential)


class Named(nn.Module):
    """A small model with ResNet-like module names."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.layer4 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.layer4(self.conv1(x)), 1))


NAMED_LAYERS = ["conv1", "layer4.0", "layer4.2", "fc"]


# ---------------------------------------------------------------- resolution (no torch work)


def test_globs_precedence_and_deep_merge():
    hw = Hardware(
        adc={"bits": 8, "percentile": 99.9},
        error={"model": "proportional", "sigma": 0.1},
        layers={
            "layer4.2": {"adc": {"bits": 10}},  # exact: applies after every glob
            "*": {"adc": {"bits": 6}},
            "layer4.*": {"adc": {"bits": 7}, "error": {"sigma": 0.2}},  # later glob beats "*"
            "fc": {"analog": False},
        },
    )
    conv1, l40, l42, fc = (hw.for_layer(n) for n in NAMED_LAYERS)
    assert conv1.adc.bits == 6 and conv1.error.sigma == 0.1
    assert l40.adc.bits == 7 and l40.error.sigma == 0.2
    assert l42.adc.bits == 10 and l42.error.sigma == 0.2
    # deep merge: what an override leaves unsaid stays the chip's
    assert l42.adc.percentile == 99.9 and l42.error.model == "proportional"
    assert not fc.analog and fc.adc.bits == 6 and all(h.analog for h in (conv1, l40, l42))
    assert all(h.layers == {} for h in (conv1, l40, l42, fc))
    # "*" also matches dots; an order change of globs changes who wins
    swapped = Hardware(layers={"layer4.*": {"adc": {"bits": 7}}, "*": {"adc": {"bits": 6}}})
    assert swapped.for_layer("layer4.0").adc.bits == 6


def test_overrides_are_validated_and_normalised():
    hw = Hardware(layers={"fc": {"error": {"sigma": 0}}})
    assert hw.layers == {"fc": {"error": {"sigma": 0.0}}} and isinstance(hw.layers["fc"]["error"]["sigma"], float)
    with pytest.raises(ValueError, match=r"layers\['layer4\.\*'\]\.adcc: Extra inputs"):
        Hardware(layers={"layer4.*": {"adcc": 3}})
    with pytest.raises(ValueError, match=r"layers\.fc: slices: 4 slices exceed"):
        Hardware(slices=4, weight_bits=8, layers={"fc": {"weight_bits": 3}})
    with pytest.raises(ValueError, match="cannot be set per layer"):
        Hardware(layers={"fc": {"layers": {}}})
    import yaml

    data = {**BASE, "output": "x.zarr", "hardware": {"layers": {"fc": {"adc": {"bits": 99}}}}}
    with pytest.raises(ScenarioError, match=r"hardware\.layers\.fc\.adc\.bits: Input should be less"):
        parse_scenario(yaml.safe_dump(data))


def test_unknown_names_list_close_matches():
    hw = Hardware(layers={"conv2": {"analog": False}, "layer5.*": {"adc": {"bits": 4}}})
    with pytest.raises(LayerNameError) as err:
        hw.resolve_layers(NAMED_LAYERS)
    msg = str(err.value)
    assert "layer name 'conv2' matches no convolution/Linear layer" in msg and "did you mean 'conv1'" in msg
    assert "glob 'layer5.*' matches no" in msg and "'layer4.0'" in msg
    with pytest.raises(LayerNameError, match="hardware.layers: layer name 'conv2'"):  # at convert time
        convert(Named(), Hardware(layers={"conv2": {"analog": False}}), device="cpu")


def test_sweep_keys_through_layers():
    assert key_parts('hardware.layers["layer4.*"].adc.bits') == ["hardware", "layers", "layer4.*", "adc", "bits"]
    assert key_parts("hardware.layers['stem.0'].analog") == ["hardware", "layers", "stem.0", "analog"]
    assert key_parts("hardware.layers.fc.adc.bits") == ["hardware", "layers", "fc", "adc", "bits"]
    assert dim_name('hardware.layers["layer4.*"].adc.bits') == "layer4.*.bits"
    assert dim_name("hardware.layers.fc.analog") == "fc.analog"

    def scenario(grid):
        data = {**BASE, "output": "x.zarr", "sweep": {"grid": grid}}
        import yaml

        return parse_scenario(yaml.safe_dump(data, sort_keys=False))

    sc = scenario({'hardware.layers["3"].adc.bits': [4, 8], "hardware.adc.bits": [5, 6]})
    plan = expand(sc, DIGITS_LAYERS)
    assert plan.dims == ["3.bits", "bits"]
    assert [p.hardware.layers["3"]["adc"]["bits"] for p in plan.points] == [4, 4, 8, 8]
    assert [p.hardware.for_layer("3").adc.bits for p in plan.points] == [4, 4, 8, 8]
    assert [p.hardware.for_layer("0").adc.bits for p in plan.points] == [5, 6, 5, 6]
    with pytest.raises(ScenarioError, match=r"did you mean 'hardware\.layers\.fc\.adc'"):
        scenario({"hardware.layers.fc.adcc.bits": [4]})
    with pytest.raises(ScenarioError, match="quote a layer name with dots in brackets"):
        scenario({"hardware.layers[layer4].adc.bits": [4]})
    with pytest.raises(LayerNameError, match="layer name '4' matches no .*layers: 0, 3, 7"):
        expand(scenario({'hardware.layers["4"].adc.bits': [4]}), DIGITS_LAYERS)


def test_layer_sweep_points():
    import yaml

    data = {**BASE, "output": "x.zarr", "sweep": {"grid": {"hardware.adc.bits": [5, 6]},
                                                "layers": {"mode": "only_ideal", "exclude": ["7"]}}}
    sc = parse_scenario(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ValueError, match="needs the model's layer names"):
        expand(sc)
    plan = expand(sc, DIGITS_LAYERS)
    assert plan.dims == ["bits", LAYER_DIM] and plan.coords[LAYER_DIM] == ["(none)", "0", "3"]
    analog = [[p.hardware.for_layer(n).analog for n in DIGITS_LAYERS] for p in plan.points[:3]]
    assert analog == [[True, True, True], [False, True, True], [True, False, True]]
    data["sweep"]["layers"] = {"mode": "only_analog", "include": ["[03]"]}
    plan = expand(parse_scenario(yaml.safe_dump(data, sort_keys=False)), DIGITS_LAYERS)
    assert plan.coords[LAYER_DIM] == ["0", "3"]
    assert [[p.hardware.for_layer(n).analog for n in DIGITS_LAYERS] for p in plan.points[:2]] == [
        [True, False, False], [False, True, False]]
    data["sweep"]["layers"] = {"mode": "only_analog", "include": ["conv*"]}
    with pytest.raises(LayerNameError, match="sweep.layers.include: glob 'conv\\*' matches no"):
        expand(parse_scenario(yaml.safe_dump(data, sort_keys=False)), DIGITS_LAYERS)


# ---------------------------------------------------------------- engine


def test_digital_layers_and_first_last_flags():
    x = torch.randn(6, 1, 6, 6)
    hw = dict(weight_bits=None, input_bits=None, adc={"bits": None}, error={"model": "proportional", "sigma": 0.2})
    flags = convert(Named(), Hardware(**hw, analog_first_layer=False, analog_last_layer=False), trials=3, device="cpu")
    layers = convert(Named(), Hardware(**hw, layers={"conv1": {"analog": False}, "fc": {"analog": False}}),
                     trials=3, device="cpu")
    assert flags.layer_names == layers.layer_names == ["layer4.0", "layer4.2"]
    assert torch.equal(flags(x, image_ids=torch.arange(6)), layers(x, image_ids=torch.arange(6)))
    assert not layers.layer_hardware["fc"].analog and layers.layer_hardware["layer4.0"].analog
    # an explicit override of the first layer's name wins over analog_first_layer
    back = convert(Named(), Hardware(**hw, analog_first_layer=False, layers={"conv1": {"analog": True}}), device="cpu")
    assert back.layer_names == NAMED_LAYERS
    # every layer digital: the digital model, one copy per chip
    none = convert(Named(), Hardware(**hw, analog=False), trials=2, device="cpu")
    assert none.layer_names == [] and not none.needs_calibration()
    assert torch.allclose(none(x)[1], Named()(x))


def test_per_layer_adc_calibrates_only_where_needed():
    model = Named()
    analog = convert(model, Hardware(adc={"bits": None}, layers={"layer4.*": {"adc": {"bits": 6}}}), device="cpu")
    assert analog.needs_calibration()
    state = analog.calibrate([torch.randn(8, 1, 6, 6)])
    assert state["conv1"]["adc_range"] is None and state["fc"]["adc_range"] is None
    assert state["layer4.0"]["adc_range"] is not None and state["layer4.2"]["adc_range"] is not None


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The digits study with conv '3' swept from a 2-bit to an 8-bit ADC, the linear layer digital."""
    d = tmp_path_factory.mktemp("swept")
    path = write_scenario(
        d, hardware={"layers": {"7": {"analog": False}}}, trials=3,
        sweep={"grid": {'hardware.layers["3"].adc.bits': [2, 8]}},
        data={"limit": 100}, execution={"shard_images": 100, "trials_per_task": 3})
    return open_result(run_scenario(path, progress=False) and d / "out.zarr")


@pytest.mark.slow
def test_swept_override_gives_different_results_and_records_settings(swept):
    ds = swept
    assert list(ds["top1"].dims) == ["3.bits", "trial"] and list(ds["3.bits"].values) == [2, 8]
    mean = ds["top1"].mean("trial")
    assert float(mean.sel({"3.bits": 2})) < float(mean.sel({"3.bits": 8}))
    assert list(ds["layer"].values) == DIGITS_LAYERS
    assert ds["analog"].values.tolist() == [[True, True, False]] * 2
    bits = ds["adc_bits"].values
    assert bits[:, 0].tolist() == [6, 6] and bits[:, 1].tolist() == [2, 8] and np.isnan(bits[:, 2]).all()
    assert ds["weight_bits"].values[:, :2].tolist() == [[8, 8], [8, 8]]
    assert json.loads(ds["layer_overrides"].values[0, 1]) == {"adc": {"bits": 2}}
    assert json.loads(ds["layer_overrides"].values[0, 2]) == {"analog": False}
    assert json.loads(ds["layer_overrides"].values[0, 0]) == {}


@pytest.fixture(scope="module")
def sensitivity(tmp_path_factory):
    d = tmp_path_factory.mktemp("sensitivity")
    path = write_scenario(
        d, hardware={"adc": {"bits": 3}, "error": {"model": "proportional", "sigma": 0.3}}, trials=4,
        sweep={"layers": {"mode": "only_analog"}},
        data={"limit": 100}, execution={"shard_images": 100, "trials_per_task": 4})
    run_scenario(path, progress=False)
    return d, path, d / "out.zarr"


@pytest.mark.slow
def test_sensitivity_sweep_layer_dim_and_ranking(sensitivity):
    _, _, store = sensitivity
    ds = open_result(store)
    assert list(ds["top1"].dims) == [LAYER_DIM, "trial"] and list(ds[LAYER_DIM].values) == DIGITS_LAYERS
    assert ds["analog"].values.tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    assert ds.attrs["layout"]["layer_sweep"] == "only_analog"
    df = layer_sensitivity(ds)
    assert sorted(df["layer"]) == sorted(DIGITS_LAYERS) and list(df["rank"]) == [1, 2, 3]
    assert (np.diff(df["cost"].values) <= 0).all()  # most costly first
    digital = float(ds["digital_top1"])
    for _, row in df.iterrows():
        acc = ds["top1"].sel({LAYER_DIM: row["layer"]}).values
        assert row["cost"] == pytest.approx(digital - acc.mean())
        assert row["cost_se"] == pytest.approx(acc.std(ddof=1) / np.sqrt(acc.size))


@pytest.mark.slow
def test_sensitivity_report_plot_and_dry_run(sensitivity, tmp_path):
    d, path, store = sensitivity
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(store)])
    assert result.exit_code == 0, result.output
    assert "layer sensitivity (only_analog)" in result.output and "rank" in result.output
    png = tmp_path / "s.png"
    result = runner.invoke(app, ["plot", str(store), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 1000
    result = runner.invoke(app, ["run", str(path), "--dry-run", "-o", str(tmp_path / "new.zarr")])
    assert result.exit_code == 0, result.output
    assert "target_layer 3" in result.output and "layers swept (target_layer): 0, 3, 7" in result.output


def test_unknown_layer_is_a_clean_exit_2(tmp_path):
    path = write_scenario(tmp_path, hardware={"layers": {"fc": {"analog": False}}})
    runner = CliRunner()
    for args in (["validate", str(path)], ["run", str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "hardware.layers: layer name 'fc' matches no convolution/Linear layer" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out.zarr").exists()
    assert crossbar_layers(Named()) == NAMED_LAYERS
    assert load_scenario(path).hardware.layers == {"fc": {"analog": False}}  # the file itself is valid
