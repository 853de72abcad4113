"""The mcsim command line: run, validate, report, plot; exit codes and clean errors."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mcsim.api import open_result
from mcsim.cli import app
from mcsim.runner.store import inspect_store
from runner_support import write_scenario

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`mcsim run` of the tiny study through the CLI (in process)."""
    d = tmp_path_factory.mktemp("cli")
    scenario = write_scenario(d)
    result = invoke("run", scenario)
    return d, scenario, d / "out.zarr", result


# ---------------------------------------------------------------- end to end


def test_run_end_to_end(cli_run):
    d, scenario, store, result = cli_run
    assert result.exit_code == 0, result.output
    assert "done:" in result.output and "evaluating" in result.output
    ds = open_result(store)
    assert dict(ds["top1"].sizes) == {"sigma": 2, "point": 2, "trial": 6}
    assert set(ds.coords) >= {"sigma", "point", "mapping", "bits", "trial", "layer", "slice"}
    for var in ("top1", "top5", "correct_top1", "correct_top5", "n_images", "digital_top1",
                "x_range", "adc_lo", "adc_hi"):
        assert var in ds, var
    assert ((ds["top1"] >= 0) & (ds["top1"] <= 1) & (ds["top5"] >= ds["top1"]) & (ds["top5"] <= 1)).all()
    assert 0.9 < float(ds["digital_top1"]) <= 1  # digits-cnn is a good model
    assert (ds["top1"].sel(sigma=0.3).mean("trial") < ds["top1"].sel(sigma=0.0).mean("trial")).all()


def test_report(cli_run, tmp_path):
    _, _, store, _ = cli_run
    csv = tmp_path / "report.csv"
    result = invoke("report", store, "--csv", csv)
    assert result.exit_code == 0, result.output
    assert "p95" in result.output and "digital model: top1 98.50%" in result.output
    df = pd.read_csv(csv)
    assert len(df) == 4 * 2  # 4 points x (top1, top5)
    assert list(df.columns[:3]) == ["sigma", "mapping", "bits"]
    assert {"mean", "std", "min", "p5", "p95", "se_binom", "n_images", "digital"} <= set(df.columns)
    ds = open_result(store)
    row = df[(df.metric == "top1") & (df.sigma == 0.3) & (df.mapping == "offset")].iloc[0]
    trials = ds["top1"].sel(sigma=0.3).isel(point=1).values
    assert row["mean"] == pytest.approx(trials.mean()) and row["min"] == pytest.approx(trials.min())
    assert row["std"] == pytest.approx(trials.std(ddof=1))
    p = trials.mean()
    assert row["se_binom"] == pytest.approx((p * (1 - p) / 200) ** 0.5)


def test_report_yield_quantile_and_paired_differences(cli_run, tmp_path):
    from mcsim import stats

    _, _, store, _ = cli_run
    csv = tmp_path / "report.csv"
    result = invoke("report", store, "--yield", "1.0", "--quantile", "0.1", "--compare", "sigma", "--csv", csv)
    assert result.exit_code == 0, result.output
    assert "95% CI" in result.output and "yield -1" in result.output and "paired differences along sigma" in result.output
    df = pd.read_csv(csv)
    ds = open_result(store)
    row = df[(df.metric == "top1") & (df.sigma == 0.3) & (df.mapping == "offset")].iloc[0]
    trials = ds["top1"].sel(sigma=0.3).isel(point=1).values
    p = trials.mean()
    assert row["se"] == pytest.approx((trials.std(ddof=1) ** 2 / 6 + p * (1 - p) / 200) ** 0.5)
    assert row["ci_lo"] == pytest.approx(p - 1.959964 * row["se"], abs=1e-6)
    assert row["yield"] == pytest.approx(np.mean(trials >= float(ds["digital_top1"]) - 0.01))
    assert (row["q_lo"], row["q_acc"]) == (-np.inf, pytest.approx(np.quantile(trials, 0.1)))  # 6 chips: no lower end
    assert row["yield_lo"] == pytest.approx(float(stats.yield_interval(trials, float(ds["digital_top1"]), 0.01)[1]))
    result = invoke("report", store, "--compare", "mapping")
    assert result.exit_code == 2 and "--compare" in result.output and "sigma, point" in result.output
    result = invoke("report", store, "--compare", "sigma=0,0.5")
    assert result.exit_code == 2 and "no value '0.5'" in result.output
    result = invoke("report", store, "--yield", "-1")
    assert result.exit_code == 2 and "--yield" in result.output


def test_plot(cli_run, tmp_path):
    _, _, store, _ = cli_run
    png = tmp_path / "acc.png"
    result = invoke("plot", store, "--output", png, "--metric", "top5", "--band", "percentile")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = invoke("plot", store)  # default: next to the store
    assert result.exit_code == 0, result.output
    assert (store.parent / "out.top1.png").stat().st_size > 1000
    result = invoke("plot", store, "--yield", "2", "--output", tmp_path / "yield.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "yield.png").stat().st_size > 1000


def test_dry_run_writes_nothing(tmp_path):
    scenario = write_scenario(tmp_path, execution={"shard_images": 70})
    result = invoke("run", scenario, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "rounded up to a multiple of the batch size 50" in result.output
    assert "16 evaluation" in result.output  # 4 points x 2 trial blocks x 2 shards
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
def test_store_of_another_scenario_is_refused_unless_overwrite(cli_run, tmp_path):
    _, _, finished, _ = cli_run
    store = tmp_path / "out.zarr"
    shutil.copytree(finished, store)
    before = {str(p): p.stat().st_mtime_ns for p in store.rglob("*")}
    other = write_scenario(tmp_path, name="other.yaml", output=store, trials=2, data={"limit": 50})
    result = invoke("run", other)
    assert result.exit_code == 2
    assert "another scenario" in result.output and "--overwrite" in result.output
    assert "overwrite=True" not in result.output and "Traceback" not in result.output
    assert {str(p): p.stat().st_mtime_ns for p in store.rglob("*")} == before

    result = invoke("run", other, "--overwrite", "--quiet")
    assert result.exit_code == 0, result.output
    ds = open_result(store)
    assert ds.sizes["trial"] == 2 and (ds["n_images"] == 50).all()
    assert inspect_store(str(store)).attrs["fingerprint"] != inspect_store(str(finished)).attrs["fingerprint"]


@pytest.mark.slow
def test_store_of_another_mcsim_version_is_refused_unless_overwrite(tmp_path):
    import zarr

    scenario = write_scenario(tmp_path, trials=2, data={"limit": 50})
    assert invoke("run", scenario, "--quiet").exit_code == 0
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r+")
    group.attrs.update(state="ready", mcsim_version="0.0.1")  # an unfinished run of an older mcsim
    result = invoke("run", scenario)
    assert result.exit_code == 2, result.output
    assert "computed with mcsim 0.0.1" in result.output and "--overwrite" in result.output
    assert "overwrite=True" not in result.output
    assert "Traceback" not in result.output
    assert invoke("run", scenario, "--overwrite", "--quiet").exit_code == 0
    assert inspect_store(str(tmp_path / "out.zarr")).attrs["mcsim_version"] != "0.0.1"


@pytest.mark.slow
def test_progress_is_drawn_from_the_runs_events(tmp_path):
    """The driver reports typed events and prints nothing; the CLI's view draws them."""
    import io

    from rich.console import Console

    from mcsim.api import run_scenario
    from mcsim.progress import ProgressView
    from mcsim.runner import events

    scenario = write_scenario(tmp_path, trials=2, data={"limit": 50})
    seen = []
    run_scenario(scenario, on_event=seen.append)
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Plan" and kinds[1:3] == ["PhaseStarted", "TaskDone"]
    phases = [e.phase for e in seen if isinstance(e, events.PhaseStarted)]
    assert phases == ["calibrating", "evaluating"] and kinds[-1] == "PhaseEnded"
    evaluating = [e for e in seen if isinstance(e, events.TaskDone) and e.phase == "evaluating"]
    started = [e for e in seen if isinstance(e, events.PhaseStarted)][1]
    assert len(evaluating) == started.tasks and sum(e.work for e in evaluating) == started.work

    log = io.StringIO()
    view = ProgressView(console=Console(file=log, width=200), out=Console(file=io.StringIO()))
    for event in seen + [events.Message("a note")]:
        view(event)
    text = log.getvalue()
    assert f"evaluating: {started.tasks}/{started.tasks} tasks" in text and "a note" in text


# ---------------------------------------------------------------- bad input


BAD = {
    "unknown-key": ("trails: 5\n", "trails", "did you mean 'trials'"),
    "negative-sigma": ("hardware: {error: {model: proportional, sigma: -0.1}}\n", "hardware.error.sigma", ""),
    "sweep-key": ("sweep: {grid: {hardware.error.sigmaa: [0.1]}}\n", "sweep.grid", "did you mean"),
    "model-name": ("model: {name: 'builtin:nope'}\n", "model.name", "digits-cnn"),
    "yaml": ("trials: [1,\n", "line", "YAML"),
    "missing-trials": (None, "trials", "Field required"),
    "data-limit": ("data: {name: digits, limit: 100000}\n", "data.limit", "exceeds"),
    "model-factory": ("model: {factory: 'no_such_module_xyz:make'}\n", "model.factory", "cannot import"),
    "calibration-split": ("data: {name: digits, calibration: {split: val}}\n", "data.calibration.split", "train or test"),
}

GOOD = """\
name: bad
seed: 0
model: {name: 'builtin:digits-cnn'}
data: {name: digits, limit: 50, batch_size: 50}
trials: 2
"""


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_malformed_scenarios_fail_cleanly_and_write_nothing(tmp_path, case):
    change, field, hint = BAD[case]
    text = GOOD.replace("trials: 2\n", "") if change is None else GOOD
    if change is not None:  # later keys replace earlier ones: drop the original line first
        key = change.split(":")[0]
        text = "".join(line + "\n" for line in text.splitlines() if not line.startswith(key + ":")) + change
    path = tmp_path / "bad.yaml"
    path.write_text(text + f"output: {tmp_path / 'out.zarr'}\n")
    for command in (["validate"], ["run"]):
        result = invoke(*command, path)
        assert result.exit_code == 2 or (command == ["validate"] and case in ("data-limit", "model-factory")), \
            (command, result.output)
        if result.exit_code == 2:
            assert field in result.output and hint in result.output, result.output
            assert "Traceback" not in result.output
    assert not (tmp_path / "out.zarr").exists()
    assert list(tmp_path.iterdir()) == [path]


def test_validate_good_scenario(tmp_path):
    path = write_scenario(tmp_path)
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert "valid scenario 'tiny'" in result.output and "4 sweep point(s)" in result.output
    assert not (tmp_path / "out.zarr").exists()


def test_report_of_missing_store(tmp_path):
    result = invoke("report", tmp_path / "nothing.zarr")
    assert result.exit_code == 2 and "no result store" in result.output and "Traceback" not in result.output


#: error class -> (its module, its arguments, exit code, whether the scenario's path leads the message)
ERRORS = {
    "ScenarioError": ("mcsim.scenario", ("s.yaml", "trials: must be positive"), 2, False),
    "StoreError": ("mcsim.runner.store", ("out.zarr holds another scenario; pass overwrite=True to delete it",), 2,
                   False),
    "ConnectError": ("mcsim.runner.ray_executor", ("address='x': expected local, auto, HOST:PORT or ray://HOST:PORT",),
                     2, False),
    "SetupError": ("mcsim.runner.driver", ("execution.device: cuda, but torch sees no GPU",), 2, True),
    "DataError": ("mcsim.data", ("data.root: no images",), 2, True),
    "ModelError": ("mcsim.models", ("model.weights: cannot read",), 2, True),
    "LayerNameError": ("mcsim.hardware", ("hardware.layers: layer name 'conv9' matches no layer",), 2, True),
    "ConversionError": ("mcsim.engine.convert", ("'0' is a torch.nn.LSTM",), 2, True),
    "TableError": ("mcsim.tables", ("cell.csv, line 4, column sigma: negative",), 2, True),
    "MetricError": ("mcsim.metrics", ("metric: mse compares outputs (1,) with targets of as many elements",), 2, True),
    "SavedModelError": ("mcsim.engine.saving", ("chip.pt: written by mcsim 0.0.9, this is 0.1.0",), 2, False),
    "AuthError": ("mcsim.runner.auth", ("the cluster at http://h:8265 requires Ray token authentication",), 2, False),
    "TaskError": ("mcsim.runner.jobs", ("task 3 failed 2 times; last error: boom",), 1, False),
    "RunError": ("mcsim.runner.jobs", ("a worker process cannot start",), 1, False),
    "ParasiticSolveError": ("mcsim.physics.parasitics", ("the grid solve did not converge",), 1, False),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_exit_by_their_branch(tmp_path, monkeypatch, name):
    """Input errors exit 2 (the scenario's path before a message about one of its settings), run
    failures 1; a fix is named by the CLI's option, not the Python keyword."""
    import importlib

    from mcsim.runner import driver

    module, args, code, prefixed = ERRORS[name]
    err = getattr(importlib.import_module(module), name)(*args)
    path = write_scenario(tmp_path)

    def fail(*_args, **_kwargs):
        raise err

    monkeypatch.setattr(driver, "run", fail)
    result = invoke("run", path)
    assert result.exit_code == code, result.output
    message = result.output.split("error: ", 1)[1]
    assert message.startswith(f"{path}: ") == prefixed, result.output
    assert ("results so far are kept" in message) == (code == 1)
    assert "=True" not in message and "address=" not in message and "Traceback" not in result.output
    if name == "StoreError":
        assert "pass --overwrite to delete it" in message
    if name == "ConnectError":
        assert message.startswith("--address 'x': expected local")


def test_every_error_class_is_in_one_branch():
    import importlib
    import pkgutil

    import mcsim
    from mcsim.errors import InputError, MCSimError, RunFailure

    classes = set()
    for info in pkgutil.walk_packages(mcsim.__path__, "mcsim."):
        if info.name == "mcsim.__main__":  # it runs the CLI
            continue
        module = importlib.import_module(info.name)
        classes |= {c for c in vars(module).values() if isinstance(c, type) and issubclass(c, BaseException)
                    and c.__module__ == info.name}
    assert {c.__name__ for c in classes} == {"MCSimError", "InputError", "RunFailure", *ERRORS}
    for c in classes:
        assert issubclass(c, MCSimError), c
        assert c in (MCSimError, InputError, RunFailure) or issubclass(c, InputError) != issubclass(c, RunFailure), c


def test_an_unusable_address_is_bad_input_named_by_the_cli_option(tmp_path):
    result = invoke("run", write_scenario(tmp_path), "--address", "nohost")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: --address 'nohost': expected local, auto, HOST:PORT" in result.output
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["report"], ["plot"]])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_cli_and_package_import_light():
    code = textwrap.dedent("""
        import sys, mcsim, mcsim.cli
        assert mcsim.__version__
        assert 'torch' not in sys.modules and 'xarray' not in sys.modules, 'heavy import'
        from mcsim import Hardware, load_scenario
        assert 'torch' not in sys.modules
        from mcsim import convert, run_scenario, open_result
        assert callable(convert) and callable(run_scenario) and callable(open_result)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "mcsim", "--help"], capture_output=True, text=True, check=True)
    assert "validate" in out.stdout and "report" in out.stdout


def test_cuda_on_a_machine_without_gpu_is_bad_input(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    path = write_scenario(tmp_path, execution={"device": "cuda"})
    result = invoke("run", path)
    assert result.exit_code == 2 and "execution.device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.zarr").exists()


def _result_like(dims: dict, coords: dict, trials: int = 3, layout: dict | None = None):
    """A dataset shaped like open_result's (for the report functions alone)."""
    import numpy as np
    import xarray as xr

    shape = tuple(dims.values()) + (trials,)
    rng = np.random.default_rng(0)
    correct = rng.integers(80, 100, size=shape)
    ds = xr.Dataset(
        {"correct_top1": (list(dims) + ["trial"], correct),
         "correct_top5": (list(dims) + ["trial"], np.minimum(correct + 5, 100)),
         "n_images": (list(dims) + ["trial"], np.full(shape, 100))},
        coords={**coords, "trial": np.arange(trials)},
        attrs={"name": "synthetic", "layout": layout or {}},
    )
    ds["top1"], ds["top5"] = ds["correct_top1"] / 100, ds["correct_top5"] / 100
    ds["digital_top1"], ds["digital_top5"] = 0.99, 1.0
    return ds


def test_report_and_plot_of_unswept_and_zipped_results(tmp_path):
    import numpy as np

    from mcsim.report import plot, summarize, x_axis

    single = _result_like({}, {})
    df = summarize(single)
    assert list(df.metric) == ["top1", "top5"] and df["trials"].tolist() == [3, 3]
    plot(single, str(tmp_path / "single.png"))
    assert (tmp_path / "single.png").stat().st_size > 1000

    zipped = _result_like({"point": 3}, {"point": ("point", np.arange(3)),
                                         "sigma": ("point", np.array([0.0, 0.1, 0.3])),
                                         "bits": ("point", np.array([4.0, 6.0, np.nan]))},
                          layout={"coord_dims": {"bits": "point", "sigma": "point", "point": "point"}})
    assert x_axis(zipped) == ("point", "sigma")  # all numbers beats numbers with a null
    df = summarize(zipped)
    assert list(df.columns[:2]) == ["bits", "sigma"]  # the scenario's order
    plot(zipped, str(tmp_path / "zipped.png"), band="percentile")
    assert (tmp_path / "zipped.png").stat().st_size > 1000
