"""The scenario file (mcsim.scenario) and its sweep expansion (mcsim.sweep)."""
from __future__ import annotations

import textwrap

import pytest

from mcsim.hardware import Hardware
from mcsim.scenario import (
    Execution,
    Scenario,
    ScenarioError,
    Sweep,
    dim_name_problems,
    load_scenario,
    parse_scenario,
    scenario_fingerprint,
)
from mcsim.sweep import SweepPlan, SweepPoint, apply_overrides, expand

BASE = """\
name: quickstart
seed: 0
model: {name: "builtin:mnist-cnn"}
data: {name: mnist5k, split: test, limit: 1000, batch_size: 250, calibration: {split: train, count: 500}}
hardware: {mapping: differential, adc: {bits: 8}, error: {model: proportional, sigma: 0.05}}
trials: 20
execution: {shard_images: 500, trials_per_task: 10, device: auto}
"""


def write(tmp_path, text: str, name: str = "scenario.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path, extra: str = "", base: str = BASE, name: str = "scenario.yaml") -> Scenario:
    return load_scenario(write(tmp_path, base + textwrap.dedent(extra), name))


def load_error(tmp_path, extra: str = "", base: str = BASE, name: str = "bad.yaml") -> str:
    with pytest.raises(ScenarioError) as info:
        load(tmp_path, extra, base=base, name=name)
    msg = str(info.value)
    assert name in msg
    # one "<file>: ..." line per problem
    assert all(line.startswith(str(tmp_path / name) + ": ") for line in msg.splitlines()), msg
    return msg


# ------------------------------------------------------------------------------ valid files


def test_quickstart_loads_with_defaults(tmp_path):
    sc = load(tmp_path, "sweep:\n  grid: {hardware.error.sigma: [0.0, 0.05, 0.1, 0.2], "
                        "hardware.mapping: [differential, offset]}\n")
    assert sc.name == "quickstart" and sc.seed == 0 and sc.trials == 20
    assert sc.model.name == "builtin:mnist-cnn"
    assert sc.data.limit == 1000 and sc.data.calibration.count == 500
    assert sc.hardware.error.sigma == 0.05 and sc.hardware.adc.bits == 8
    assert sc.execution == Execution(shard_images=500, trials_per_task=10, device="auto")
    assert sc.execution.gpus_per_task == 1.0 and sc.execution.workers is None and sc.execution.max_retries == 3
    assert sc.output == "outputs/quickstart.zarr"


def test_minimal_scenario_defaults(tmp_path):
    sc = load(tmp_path, base="name: tiny\nseed: 3\nmodel: {name: 'builtin:digits-cnn'}\ndata: {name: digits}\ntrials: 1\n")
    assert sc.hardware == Hardware()
    assert sc.sweep == Sweep() and sc.sweep.is_empty
    assert sc.execution == Execution()
    assert sc.output == "outputs/tiny.zarr"


def test_explicit_output_url(tmp_path):
    sc = load(tmp_path, "output: s3://bucket/studies/q.zarr\n")
    assert sc.output == "s3://bucket/studies/q.zarr"


def test_no_sweep_expands_to_one_point(tmp_path):
    sc = load(tmp_path)
    plan = expand(sc)
    assert isinstance(plan, SweepPlan)
    assert plan.dims == [] and plan.coords == {} and plan.shape == ()
    assert len(plan.points) == 1
    (p,) = plan.points
    assert isinstance(p, SweepPoint)
    assert p.index == 0 and p.position == () and p.labels == {} and p.overrides == {}
    assert p.hardware == sc.hardware


def test_grid_expansion(tmp_path):
    sc = load(tmp_path, """\
        sweep:
          grid: {hardware.error.sigma: [0.0, 0.05, 0.1, 0.2], hardware.mapping: [differential, offset]}
        """)
    plan = expand(sc)
    assert plan.dims == ["sigma", "mapping"]
    assert plan.coords == {"sigma": [0.0, 0.05, 0.1, 0.2], "mapping": ["differential", "offset"]}
    assert plan.shape == (4, 2)
    assert len(plan.points) == 8
    # C order: the last dim varies fastest
    assert [p.position for p in plan.points[:3]] == [(0, 0), (0, 1), (1, 0)]
    for i, p in enumerate(plan.points):
        assert p.index == i
        s, m = p.position
        assert p.labels == {"sigma": plan.coords["sigma"][s], "mapping": plan.coords["mapping"][m]}
        assert p.overrides == {"hardware.error.sigma": p.labels["sigma"], "hardware.mapping": p.labels["mapping"]}
        assert p.hardware.error.sigma == p.labels["sigma"]
        assert p.hardware.mapping == p.labels["mapping"]
        # untouched settings come from the scenario's hardware
        assert p.hardware.error.model == "proportional" and p.hardware.adc.bits == 8
        assert plan.point_at(p.position) is p
    assert plan.coord_dims == {"sigma": "sigma", "mapping": "mapping"}
    assert plan.keys == {"sigma": "hardware.error.sigma", "mapping": "hardware.mapping"}
    # the scenario's own hardware is unchanged
    assert sc.hardware.error.sigma == 0.05 and sc.hardware.mapping == "differential"


def test_zip_expansion(tmp_path):
    sc = load(tmp_path, """\
        sweep:
          zip: {hardware.weight_bits: [4, 6, 8], hardware.slices: [1, 2, 4]}
        """)
    plan = expand(sc)
    assert plan.dims == ["point"]
    assert plan.shape == (3,)
    assert plan.coords == {"weight_bits": [4, 6, 8], "slices": [1, 2, 4], "point": [0, 1, 2]}
    assert plan.coord_dims == {"weight_bits": "point", "slices": "point", "point": "point"}
    for j, p in enumerate(plan.points):
        assert p.index == j and p.position == (j,)
        assert p.labels == {"weight_bits": [4, 6, 8][j], "slices": [1, 2, 4][j], "point": j}
        assert p.overrides == {"hardware.weight_bits": [4, 6, 8][j], "hardware.slices": [1, 2, 4][j]}
        assert (p.hardware.weight_bits, p.hardware.slices) == ([4, 6, 8][j], [1, 2, 4][j])


def test_zip_makes_combinations_valid_that_a_grid_would_not(tmp_path):
    # slices 4 with 4-bit weights (3 magnitude bits) is invalid, but the zip never pairs them
    sc = load(tmp_path, "sweep: {zip: {hardware.weight_bits: [4, 8], hardware.slices: [1, 4]}}\n")
    assert [p.hardware.slices for p in expand(sc).points] == [1, 4]


def test_grid_and_zip_expansion(tmp_path):
    sc = load(tmp_path, """\
        sweep:
          grid: {hardware.adc.bits: [4, 8, null]}
          zip: {hardware.error.sigma: [0.01, 0.1], hardware.on_off_ratio: [10.0, 1000.0]}
        """)
    plan = expand(sc)
    assert plan.dims == ["bits", "point"]
    assert plan.shape == (3, 2)
    assert plan.coords == {
        "bits": [4, 8, None],
        "sigma": [0.01, 0.1],
        "on_off_ratio": [10.0, 1000.0],
        "point": [0, 1],
    }
    assert len(plan.points) == 6
    p = plan.points[5]
    assert p.index == 5 and p.position == (2, 1)
    assert p.labels == {"bits": None, "sigma": 0.1, "on_off_ratio": 1000.0, "point": 1}
    assert p.overrides == {"hardware.adc.bits": None, "hardware.error.sigma": 0.1, "hardware.on_off_ratio": 1000.0}
    assert p.hardware.adc.bits is None and p.hardware.error.sigma == 0.1 and p.hardware.on_off_ratio == 1000.0
    assert plan.points[2].position == (1, 0) and plan.points[2].hardware.adc.bits == 8


def test_sweep_values_are_normalised(tmp_path):
    # 0 and 1e-2 (a string in YAML 1.1) become the floats the Hardware holds
    sc = load(tmp_path, "sweep: {grid: {hardware.error.sigma: [0, 1e-2, 0.1]}}\n")
    assert sc.sweep.grid == {"hardware.error.sigma": [0.0, 0.01, 0.1]}
    assert all(isinstance(v, float) for v in expand(sc).coords["sigma"])
    same = load(tmp_path, "sweep: {grid: {hardware.error.sigma: [0.0, 0.01, 0.1]}}\n", name="other.yaml")
    assert scenario_fingerprint(sc) == scenario_fingerprint(same)


def test_sweep_of_a_whole_group(tmp_path):
    sc = load(tmp_path, "sweep: {grid: {hardware.adc: [{bits: 4}, {bits: 6, percentile: 99.9}]}}\n")
    plan = expand(sc)
    assert plan.dims == ["adc"]
    assert [p.hardware.adc.bits for p in plan.points] == [4, 6]
    assert plan.points[1].hardware.adc.percentile == 99.9
    assert plan.coords["adc"][0]["bits"] == 4  # JSON form of the validated group


def test_apply_overrides():
    hw = Hardware()
    assert apply_overrides(hw, {}) is hw
    out = apply_overrides(hw, {"hardware.adc.bits": 4, "hardware.read_noise.sigma": 0.01})
    assert out.adc.bits == 4 and out.read_noise.sigma == 0.01 and hw.adc.bits == 8


def test_canonical_text_round_trips(tmp_path):
    sc = load(tmp_path, """\
        sweep:
          grid: {hardware.error.sigma: [0.0, 0.1]}
          zip: {hardware.adc.bits: [4, 8]}
        output: s3://b/q.zarr
        """)
    text = sc.text
    assert "hardware:" in text and "sweep:" in text and "weight_bits: 8" in text  # defaults written out
    again = parse_scenario(text, source="canonical")
    assert again == sc
    assert again.text == text
    assert scenario_fingerprint(again) == scenario_fingerprint(sc) == sc.fingerprint
    assert len(sc.fingerprint) == 64 and int(sc.fingerprint, 16) >= 0


def test_parse_scenario_from_string():
    sc = parse_scenario(BASE)
    assert sc.name == "quickstart"
    with pytest.raises(ScenarioError, match=r"^<string>: trials: "):
        parse_scenario(BASE.replace("trials: 20", "trials: 0"))
    with pytest.raises(ScenarioError, match=r"^mine\.yaml: "):
        parse_scenario(BASE + "bogus: 1\n", source="mine.yaml")


# ------------------------------------------------------------------------------ fingerprint


def test_fingerprint_ignores_execution_and_output(tmp_path):
    a = load(tmp_path, name="a.yaml")
    b = load(tmp_path, base=BASE.replace(
        "execution: {shard_images: 500, trials_per_task: 10, device: auto}",
        "execution: {shard_images: 7, trials_per_task: 2, device: cpu, gpus_per_task: 0.25, workers: 3, "
        "max_retries: 0}"), extra="output: /elsewhere/x.zarr\n", name="b.yaml")
    assert a.execution != b.execution and a.output != b.output
    assert scenario_fingerprint(a) == scenario_fingerprint(b)


@pytest.mark.parametrize("old,new", [
    ("name: quickstart", "name: quickstart2"),
    ("seed: 0", "seed: 1"),
    ("trials: 20", "trials: 21"),
    ("builtin:mnist-cnn", "builtin:mnist-resnet"),
    ("limit: 1000", "limit: 999"),
    ("count: 500", "count: 400"),
    ("sigma: 0.05", "sigma: 0.06"),
    ("adc: {bits: 8}", "adc: {bits: 7}"),
    ("mapping: differential", "mapping: offset"),
])
def test_fingerprint_changes_with_everything_else(tmp_path, old, new):
    assert old in BASE
    a = load(tmp_path, name="a.yaml")
    b = load(tmp_path, base=BASE.replace(old, new), name="b.yaml")
    assert scenario_fingerprint(a) != scenario_fingerprint(b)


def test_fingerprint_changes_with_sweep(tmp_path):
    a = load(tmp_path, name="a.yaml")
    b = load(tmp_path, "sweep: {grid: {hardware.error.sigma: [0.05]}}\n", name="b.yaml")
    c = load(tmp_path, "sweep: {grid: {hardware.error.sigma: [0.05, 0.1]}}\n", name="c.yaml")
    d = load(tmp_path, "sweep: {zip: {hardware.error.sigma: [0.05, 0.1]}}\n", name="d.yaml")
    prints = {scenario_fingerprint(s) for s in (a, b, c, d)}
    assert len(prints) == 4


def test_fingerprint_same_for_equivalent_spelling(tmp_path):
    a = load(tmp_path, name="a.yaml")
    # defaults spelled out, flow vs block style, key order
    b = load(tmp_path, base="""\
        seed: 0
        name: quickstart
        trials: 20
        model:
          name: builtin:mnist-cnn
        data: {name: mnist5k, split: test, limit: 1000, batch_size: 250, calibration: {split: train, count: 500}}
        hardware:
          error: {sigma: 0.05, model: proportional}
          adc: {bits: 8, range: calibrated}
          slices: 1
        """, name="b.yaml")
    assert scenario_fingerprint(a) == scenario_fingerprint(b)


# ------------------------------------------------------------------------------ malformed files


def test_unknown_top_level_key(tmp_path):
    msg = load_error(tmp_path, "trails: 3\n")
    assert "trails: Extra inputs are not permitted" in msg


def test_unknown_hardware_key(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("adc: {bits: 8}", "adc: {bitz: 8}"))
    assert "hardware.adc.bitz: Extra inputs are not permitted" in msg
    assert "did you mean 'bits'" in msg


def test_negative_sigma(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("sigma: 0.05", "sigma: -0.05"))
    assert "hardware.error.sigma: Input should be greater than or equal to 0" in msg


def test_adc_bits_zero(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("adc: {bits: 8}", "adc: {bits: 0}"))
    assert str(tmp_path / "bad.yaml") + ": hardware.adc.bits: Input should be greater than or equal to 1" in msg


def test_slices_exceed_weight_bits(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("mapping: differential,", "mapping: differential, slices: 8,"))
    assert "hardware.slices: 8 slices exceed the 7 bits" in msg


def test_slices_exceed_weight_bits_via_sweep(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.slices: [1, 2, 16], hardware.error.sigma: [0.0, 0.1]}}\n")
    assert "hardware.slices=16" in msg
    assert "hardware.slices: 16 slices exceed" in msg
    assert "hardware.slices=2" not in msg  # valid points are not reported
    assert len(msg.splitlines()) == 2  # one line per failing point


def test_sweep_point_unknown_value_of_literal(tmp_path):
    msg = load_error(tmp_path, "sweep: {zip: {hardware.mapping: [differential, diff]}}\n")
    assert 'hardware.mapping="diff"' in msg and "hardware.mapping: Input should be 'differential' or 'offset'" in msg


def test_many_failing_points_are_capped(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.slices: [16], hardware.rows_max: %s}}\n"
                     % list(range(1, 31)))
    assert "and 20 more sweep points fail" in msg
    assert len(msg.splitlines()) == 11


def test_unknown_mapping(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("mapping: differential", "mapping: twos_complement"))
    assert "hardware.mapping: Input should be 'differential' or 'offset'" in msg
    assert "twos_complement" in msg


def test_sweep_key_not_under_hardware(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {trials: [1, 2], data.limit: [10]}}\n")
    assert "sweep.grid.trials: sweep keys must be dotted paths into the hardware" in msg
    assert "sweep.grid.data.limit:" in msg


def test_sweep_key_unknown_hardware_setting(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.adc.bitz: [4, 8]}}\n")
    assert "sweep.grid.hardware.adc.bitz: unknown hardware setting 'bitz'" in msg
    assert "hardware.adc.bits" in msg  # suggestion


def test_sweep_key_below_a_setting(tmp_path):
    msg = load_error(tmp_path, "sweep: {zip: {hardware.mapping.kind: [1]}}\n")
    assert "sweep.zip.hardware.mapping.kind: 'hardware.mapping' is a single setting" in msg


def test_sweep_empty_list(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.adc.bits: []}}\n")
    assert "sweep.grid.hardware.adc.bits: the list of values must not be empty" in msg


def test_sweep_values_not_a_list(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.adc.bits: 4}}\n")
    assert "sweep.grid.hardware.adc.bits: Input should be a valid list" in msg


def test_zip_unequal_lengths(tmp_path):
    msg = load_error(tmp_path, "sweep: {zip: {hardware.adc.bits: [4, 6, 8], hardware.error.sigma: [0.1, 0.2]}}\n")
    assert "sweep.zip: the zipped lists must all have the same length" in msg
    assert "hardware.adc.bits: 3" in msg and "hardware.error.sigma: 2" in msg


def test_key_in_grid_and_zip(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.adc.bits: [4]}, zip: {hardware.adc.bits: [8]}}\n")
    assert "'hardware.adc.bits' is in both sweep.grid and sweep.zip" in msg


def test_dim_name_clash_in_grid(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.error.sigma: [0.1], hardware.read_noise.sigma: [0.01]}}\n")
    assert "'hardware.read_noise.sigma' and 'hardware.error.sigma' would both be named 'sigma'" in msg


def test_dim_name_clash_between_grid_and_zip(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.error.model: [proportional]}, "
                               "zip: {hardware.read_noise.model: [independent]}}\n")
    assert "hardware.read_noise.model" in msg and "hardware.error.model" in msg and "'model'" in msg


def test_duplicate_grid_values(tmp_path):
    msg = load_error(tmp_path, "sweep: {grid: {hardware.error.sigma: [0.1, 0.2, 0.1]}}\n")
    assert "sweep.grid.hardware.error.sigma: value 0.1 appears twice" in msg


def test_reserved_dim_names():
    # no Hardware setting is named like a reserved dim today, so check the name rule alone
    for name in ("trial", "layer", "point"):
        (grid,) = dim_name_problems([f"hardware.x.{name}"], [])
        assert f"grid: 'hardware.x.{name}' would be named '{name}', a name reserved" in grid
        (zipped,) = dim_name_problems([], [f"hardware.y.{name}"])
        assert zipped.startswith("zip: ")
    assert dim_name_problems(["hardware.adc.bits", "hardware.error.sigma"], ["hardware.slices"]) == []
    (clash,) = dim_name_problems(["hardware.adc.bits"], ["hardware.foo.bits"])
    assert "'hardware.foo.bits' and 'hardware.adc.bits' would both be named 'bits'" in clash


def test_yaml_syntax_error_names_line(tmp_path):
    msg = load_error(tmp_path, base=BASE + "hardware:\n  adc: 1\n   bits: 2\n")
    assert "line 10, column 8: YAML syntax error: mapping values are not allowed here" in msg


def test_yaml_unclosed_flow(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("adc: {bits: 8},", "adc: {bits: 8,"))
    assert "YAML syntax error" in msg and "line " in msg


def test_duplicate_yaml_key(tmp_path):
    msg = load_error(tmp_path, "seed: 4\n")
    assert "line 8" in msg and "duplicate key 'seed'" in msg and "first at line 2" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ScenarioError, match="directory"):
        load_scenario(tmp_path)


def test_empty_and_non_mapping_files(tmp_path):
    assert "empty" in load_error(tmp_path, base="", name="empty.yaml")
    assert "mapping" in load_error(tmp_path, base="- 1\n- 2\n", name="list.yaml")


def test_trials_zero(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("trials: 20", "trials: 0"))
    assert "trials: give at least 1 trial (got 0), or {target_se, min, max} for adaptive trials" in msg


def test_missing_required_field(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("trials: 20\n", ""))
    assert "trials: Field required" in msg


def test_negative_seed_and_bad_execution(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("seed: 0", "seed: -1").replace("device: auto", "device: tpu"))
    assert "seed: Input should be greater than or equal to 0" in msg
    assert "execution.device: Input should be 'auto', 'cpu' or 'cuda'" in msg
    assert len(msg.splitlines()) == 2  # every problem reported at once


@pytest.mark.parametrize("field,value", [
    ("shard_images", 0), ("trials_per_task", 0), ("gpus_per_task", 0), ("workers", 0), ("max_retries", -1),
])
def test_execution_bounds(tmp_path, field, value):
    msg = load_error(tmp_path, base=BASE.replace(
        "execution: {shard_images: 500, trials_per_task: 10, device: auto}", f"execution: {{{field}: {value}}}"))
    assert f"execution.{field}: Input should be greater than" in msg


def test_bad_name(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("name: quickstart", "name: ../escape"))
    assert "name:" in msg


def test_model_and_data_errors_are_named(tmp_path):
    msg = load_error(tmp_path, base=BASE.replace("limit: 1000", "limit: 0").replace(
        'model: {name: "builtin:mnist-cnn"}', 'model: {name: "builtin:mnist-cnn", wieghts: x}'))
    assert "data.limit: Input should be greater than or equal to 1" in msg
    assert "model.wieghts: Extra inputs are not permitted" in msg


# ------------------------------------------------------------------------------ python API


def test_python_api_validates_sweep_points():
    from pydantic import ValidationError

    kwargs = dict(name="x", seed=0, model={"name": "builtin:digits-cnn"}, data={"name": "digits"}, trials=1)
    sc = Scenario(**kwargs, sweep={"grid": {"hardware.adc.bits": [4, 8]}})
    assert expand(sc).shape == (2,)
    with pytest.raises(ValidationError, match="16 slices exceed"):
        Scenario(**kwargs, sweep={"grid": {"hardware.slices": [16]}})


def test_scenario_is_frozen(tmp_path):
    sc = load(tmp_path)
    with pytest.raises(Exception):
        sc.trials = 3


def test_importing_the_layer_does_not_import_ray_or_zarr():
    import subprocess
    import sys

    code = "import sys, mcsim.scenario, mcsim.sweep; print(sorted(m for m in ('ray', 'zarr') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_layer_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, BASE)
    code = (
        "import sys, mcsim.scenario, mcsim.sweep\n"
        "assert 'torch' not in sys.modules\n"
        f"mcsim.sweep.expand(mcsim.scenario.load_scenario({str(path)!r}))\n"
        "assert 'torch' not in sys.modules, 'loading a scenario imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", "import mcsim.scenario, sys; assert 'torch' not in sys.modules"], check=True)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_empty_sections_mean_defaults(tmp_path):
    sc = load(tmp_path, base=BASE.replace(
        "hardware: {mapping: differential, adc: {bits: 8}, error: {model: proportional, sigma: 0.05}}\n",
        "hardware:\n  # nothing yet\n").replace(
        "execution: {shard_images: 500, trials_per_task: 10, device: auto}\n", "execution:\n"),
        extra="sweep:\n  grid:\n  zip:\n")
    assert sc.hardware == Hardware() and sc.execution == Execution() and sc.sweep.is_empty


def test_sweep_does_not_import_the_scenario():
    """The study layer has no import circle: mcsim.sweep sits below mcsim.scenario."""
    import subprocess
    import sys

    code = ("import sys, mcsim.sweep, mcsim.validation; "
            "assert 'mcsim.scenario' not in sys.modules, sorted(m for m in sys.modules if m.startswith('mcsim'))")
    subprocess.run([sys.executable, "-c", code], check=True)
