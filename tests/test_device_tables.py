"""Measured device tables (docs/physics.md 13.1): interpolation, proportional equivalence bit for bit,
malformed tables named by file/line/column, the content hash in the fingerprint and on resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from mcsim import Hardware
from mcsim.api import run_scenario
from mcsim.cli import app
from mcsim.physics import device_tables, devices
from mcsim.runner.plan import make_plan
from mcsim.runner.store import ResultStore, StoreError
from mcsim.scenario import load_scenario, parse_scenario
from draws_support import LAYERS, analog_layer, draw
from runner_support import write_scenario

GOOD = "# gmax: 25 uS\nG,mu,sigma,sigma_read\n0.25,0.01,0.30,0.05\n5,-0.02,0.60,0.10\n25,0.0,0.40,0.20\n"


def write(tmp_path, text, name="cell.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_linear_interpolation_on_normalized_conductance(tmp_path):
    hw = Hardware(error={"model": "table", "file": write(tmp_path, GOOD)})
    g = torch.linspace(0.25 / 25, 1, 101, dtype=torch.float64)
    table = np.loadtxt(tmp_path / "cell.csv", delimiter=",", skiprows=2) / 25
    for col, j in (("mu", 1), ("sigma", 2), ("sigma_read", 3)):
        want = np.interp(g.numpy(), table[:, 0], table[:, j])
        np.testing.assert_allclose(device_tables.curve(hw.error, col)(g).numpy(), want, rtol=1e-12, atol=1e-15)
    eps = torch.randn(101, dtype=torch.float64)
    mu, sig = (np.interp(g.numpy(), table[:, 0], table[:, j]) for j in (1, 2))
    got = devices.perturb(g, hw.error, eps, hw.gmin)
    np.testing.assert_allclose(got.numpy(), g.numpy() + mu + sig * eps.numpy(), rtol=1e-12)


def test_npz_equals_csv(tmp_path):
    cols = np.loadtxt(tmp_path.joinpath("x").parent / write(tmp_path, GOOD), delimiter=",", skiprows=2)
    npz = tmp_path / "cell.npz"
    np.savez(npz, G=cols[:, 0], mu=cols[:, 1], sigma=cols[:, 2], gmax=25.0, unit="uS")
    a = Hardware(error={"model": "table", "file": str(tmp_path / "cell.csv")}).error
    b = Hardware(error={"model": "table", "file": str(npz)}).error
    g = torch.rand(50, dtype=torch.float64)
    assert torch.equal(device_tables.curve(a, "sigma")(g), device_tables.curve(b, "sigma")(g))


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("gmax", [1.0, 25.0])
def test_a_table_of_sigma_k_times_g_gives_the_proportional_chips(tmp_path, name, gmax):
    """Same keyed normals, same float32 products: bit for bit, clipped and not."""
    k = 0.07
    g = np.concatenate([[0.0], np.sort(np.random.default_rng(0).uniform(0, 1, 30)), [1.0]]) * gmax
    rows = "\n".join(f"{float(x)!r},{float(k * x)!r}" for x in g)
    path = write(tmp_path, f"# gmax: {gmax} uS\nG,sigma\n{rows}\n")
    for clip in (True, False):
        prop = analog_layer(name, Hardware(error={"model": "proportional", "sigma": k, "clip": clip}), [0, 2])
        table = Hardware(error={"model": "table", "file": path, "clip": clip})
        want, _ = draw(prop)
        got, _ = draw(prop, hw=table)
        for kind in want:
            assert torch.equal(got[kind], want[kind]), kind


MALFORMED = {
    "non_monotonic": ("# gmax: 25 uS\nG,sigma\n1,0.1\n3,0.2\n2,0.3\n", "line 5, column G", "does not increase"),
    "negative_sigma": ("# gmax: 25 uS\nG,sigma\n1,0.1\n3,-0.2\n", "line 4, column sigma", "negative"),
    "nan": ("# gmax: 25 uS\nG,sigma\n1,nan\n3,0.2\n", "line 3, column sigma", "not a finite number"),
    "not_a_number": ("# gmax: 25 uS\nG,sigma\n1,0.1\n3,abc\n", "line 4, column sigma", "not a number"),
    "missing_column": ("# gmax: 25 uS\nG,mu\n1,0.1\n3,0.2\n", "missing column 'sigma'", ""),
    "short_row": ("# gmax: 25 uS\nG,sigma\n1,0.1\n3\n", "line 4", "1 values for the 2 columns"),
    "unknown_column": ("# gmax: 25 uS\nG,sigma,foo\n1,0.1,2\n", "line 2", "unknown column 'foo'"),
    "one_row": ("# gmax: 25 uS\nG,sigma\n1,0.1\n", "at least two rows", ""),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_table_names_file_line_and_column(tmp_path, case):
    text, where, what = MALFORMED[case]
    path = write(tmp_path, text)
    with pytest.raises(ValidationError) as err:
        Hardware(error={"model": "table", "file": path})
    msg = str(err.value)
    assert "error.file" in msg and path in msg and where in msg and what in msg, msg


def test_table_settings_are_checked(tmp_path):
    path = write(tmp_path, "G,sigma\n1,0.1\n3,0.2\n")
    with pytest.raises(ValidationError, match=r"error.gmax: the table .* states no physical Gmax"):
        Hardware(error={"model": "table", "file": path})
    assert Hardware(error={"model": "table", "file": path, "gmax": 3}).error.sha256
    with pytest.raises(ValidationError, match="error.gmax: 20 disagrees"):
        Hardware(error={"model": "table", "file": write(tmp_path, GOOD, "b.csv"), "gmax": 20})
    with pytest.raises(ValidationError, match="error.file: table .* not found"):
        Hardware(error={"model": "table", "file": str(tmp_path / "nope.csv")})
    with pytest.raises(ValidationError, match="error.file: only used with error.model 'table'"):
        Hardware(error={"model": "proportional", "file": path})
    with pytest.raises(ValidationError, match="drift.file: missing column 'nu_mean'|missing column 'nu_mean'"):
        Hardware(drift={"model": "table", "file": write(tmp_path, GOOD, "c.csv"), "time_s": 100})


def test_range_warning_names_the_table(tmp_path):
    path = write(tmp_path, GOOD)
    hw = Hardware(error={"model": "table", "file": path}, on_off_ratio=1000)  # Gmin 0.025 uS < 0.25 uS
    (msg,) = devices.hardware_warnings(hw)
    assert path in msg and "extrapolated" in msg
    assert devices.hardware_warnings(Hardware(error={"model": "table", "file": path}, on_off_ratio=100)) == []


def _scenario(tmp_path, table):
    return write_scenario(tmp_path, hardware={"error": {"model": "table", "file": table, "sigma": 0.0}},
                          sweep={"grid": {"hardware.adc.bits": [6]}})


def test_the_fingerprint_records_the_table_and_resume_refuses_a_changed_one(tmp_path):
    table = write(tmp_path, GOOD)
    path = _scenario(tmp_path, table)
    sc = load_scenario(path)
    assert sc.hardware.error.sha256 and sc.hardware.error.sha256 in sc.text
    ResultStore.create(str(tmp_path / "out.zarr"), sc, make_plan(sc, 200))
    write(tmp_path, GOOD.replace("0.60", "0.65"))
    changed = load_scenario(path)
    assert changed.fingerprint != sc.fingerprint
    with pytest.raises(StoreError, match="another scenario"):
        run_scenario(path, dry_run=True, progress=False)
    with pytest.raises(ValueError, match=r"error.sha256: the table .* changed"):
        parse_scenario(sc.text)  # the canonical text records the old table


def test_a_swept_table_changed_changes_the_fingerprint(tmp_path):
    a, b = write(tmp_path, GOOD, "a.csv"), write(tmp_path, GOOD, "b.csv")
    path = write_scenario(tmp_path, hardware={"error": {"model": "table", "file": a, "sigma": 0.0}},
                          sweep={"grid": {"hardware.error.file": [a, b]}})
    before = load_scenario(path).fingerprint
    write(tmp_path, GOOD.replace("0.60", "0.65"), "b.csv")
    assert load_scenario(path).fingerprint != before  # the swept file's content, not only its name


def test_validate_exits_2_on_a_bad_table(tmp_path):
    table = write(tmp_path, MALFORMED["negative_sigma"][0])
    result = CliRunner().invoke(app, ["validate", str(_scenario(tmp_path, table))])
    assert result.exit_code == 2, result.output
    assert "line 4, column sigma" in result.output and table in result.output.replace("\n", "")
    assert not (tmp_path / "out.zarr").exists()


def test_the_example_table_is_the_cited_pcm_fit():
    hw = Hardware(error={"model": "table", "file": "scenarios/devices/pcm_joshi2020.csv"}, on_off_ratio=100)
    g = torch.linspace(0.01, 1, 200, dtype=torch.float64)
    fit = devices.PROGRAMMING_FITS["pcm"].normalized_sigma(g)
    np.testing.assert_allclose(device_tables.curve(hw.error, "sigma")(g).numpy(), fit.numpy(), rtol=2e-3)


def test_a_table_per_layer(tmp_path):
    path = write(tmp_path, GOOD)
    hw = Hardware(layers={"fc": {"error": {"model": "table", "file": path}}})
    assert hw.for_layer("fc").error.sha256 == hw.layers["fc"]["error"]["sha256"]
    assert hw.for_layer("conv1").error.model == "none"
    with pytest.raises(ValidationError, match=r"layers.fc.error: .*line 4, column sigma"):
        Hardware(layers={"fc": {"error": {"model": "table", "file": write(tmp_path, MALFORMED["negative_sigma"][0], "b.csv")}}})
