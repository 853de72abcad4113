"""Metrics beyond classification (docs/physics.md section 14): ``metric: mse | perplexity | {factory}``.

Closed forms and independent computations of the per-chip values and their image term; a store's
numbers that do not depend on how images and chips were cut into tasks; a perplexity scenario end to
end through the CLI with its report.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from mcsim import stats
from mcsim.api import run_scenario
from mcsim.data import TEXT_VOCAB, DataSpec, evaluation_dataset, load_split
from mcsim.metrics import MetricError, image_losses
from mcsim.models import ModelSpec, load_model
from mcsim.runner.plan import DigitalTask, make_plan
from mcsim.runner.worker import Worker
from mcsim.scenario import ScenarioError, parse_scenario
from typer.testing import CliRunner

from mcsim.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _value(outputs, targets, metric, transform, fn=None):
    """(value, se_image) of each chip through the worker's path: losses, their sums, the metric."""
    loss, count = image_losses(outputs, targets, metric, fn)
    return stats.metric_values(stats.moment_sums(loss, count), targets.shape[0], transform)


# ---------------------------------------------------------------- closed forms


def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    vocab = 11
    logits = torch.full((3, 5, 7, vocab), 2.5)  # 3 chips, 5 sequences of 7 tokens
    targets = torch.randint(0, vocab, (5, 7), generator=torch.Generator().manual_seed(0))
    value, se = _value(logits, targets, "perplexity", "exp")
    np.testing.assert_allclose(value, vocab, rtol=1e-12)
    np.testing.assert_allclose(se, 0.0, atol=1e-9)  # every sequence scores the same


def test_perplexity_equals_an_independent_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(2, 6, 9, 13, generator=g), torch.randint(0, 13, (6, 9), generator=g)
    value, _ = _value(logits, targets, "perplexity", "exp")
    for chip in range(2):
        ce = torch.nn.functional.cross_entropy(logits[chip].double().reshape(-1, 13), targets.reshape(-1))
        assert value[chip] == pytest.approx(math.exp(float(ce)), rel=1e-12)


def test_mse_of_a_known_offset():
    g = torch.Generator().manual_seed(2)
    targets = torch.randn(8, 3, generator=g)
    offsets = torch.tensor([0.0, 0.5, -2.0]).view(3, 1, 1)
    value, se = _value(targets + offsets, targets, "mse", "identity")
    np.testing.assert_allclose(value, [0.0, 0.25, 4.0], rtol=1e-6)
    np.testing.assert_allclose(se, 0.0, atol=1e-6)


def test_image_term_is_the_standard_error_of_the_per_image_means():
    """Images of equal size: the ratio estimator's error is std(L_i / c, ddof=1) / sqrt(N)."""
    g = torch.Generator().manual_seed(3)
    targets, outputs = torch.randn(40, 4, generator=g), torch.randn(1, 40, 4, generator=g)
    value, se = _value(outputs, targets, "mse", "identity")
    per_image = ((outputs[0].double() - targets.double()) ** 2).mean(1).numpy()
    assert value[0] == pytest.approx(per_image.mean(), rel=1e-12)
    assert se[0] == pytest.approx(per_image.std(ddof=1) / math.sqrt(40), rel=1e-12)


def test_ratio_estimator_with_unequal_counts_against_a_direct_sum():
    g = np.random.default_rng(4)
    loss, count = g.random((2, 30)) * 5, g.integers(1, 9, 30).astype(float)
    value, se = stats.metric_values(stats.moment_sums(loss, count), 30, "exp")
    for chip in range(2):
        m = loss[chip].sum() / count.sum()
        resid = loss[chip] - m * count
        var = 30 * (resid**2).sum() / (29 * count.sum() ** 2)
        assert value[chip] == pytest.approx(math.exp(m), rel=1e-12)
        assert se[chip] == pytest.approx(math.exp(m) * math.sqrt(var), rel=1e-9)


def test_se_mean_and_yield_of_a_loss():
    values, se_image = np.array([1.0, 1.2, 1.4, 2.0]), np.full(4, 0.1)
    assert stats.se_mean(values, 100, se_image) == pytest.approx(math.sqrt(values.var(ddof=1) / 4 + 0.01))
    y, lo, hi = stats.yield_interval(values, 1.0, 0.4, lower_is_better=True)  # within 0.4 above digital 1.0
    assert y == pytest.approx(0.75) and lo < 0.75 < hi


def abs_error(outputs, targets, scale=1.0):
    """A factory metric of the tests: mean absolute error per sample, times ``scale``."""
    return scale * (outputs - targets).abs().flatten(2).mean(-1)


def test_factory_metric_is_the_mean_of_its_values():
    targets = torch.arange(6.0).view(6, 1)
    outputs = torch.stack([targets + 1, targets - 3])
    value, _ = _value(outputs, targets, "abs_error", "identity", lambda o, t: abs_error(o, t))
    np.testing.assert_allclose(value, [1.0, 3.0])
    with pytest.raises(MetricError, match="one value per chip and sample"):
        image_losses(outputs, targets, "bad", lambda o, t: o.sum())


def test_mismatched_targets_are_refused():
    with pytest.raises(MetricError, match="perplexity scores logits"):
        image_losses(torch.zeros(1, 4, 5, 7), torch.zeros(4, 5), "perplexity")
    with pytest.raises(MetricError, match="mse compares"):
        image_losses(torch.zeros(1, 4, 2), torch.zeros(4, 3), "mse")


# ---------------------------------------------------------------- the data sets


def test_text_and_diabetes_sets():
    train, test = load_split(DataSpec(name="text"), "train"), load_split(DataSpec(name="text"), "test")
    assert len(train) + len(test) == (69555 - 1) // 64 and len(test) == round(0.2 * (len(train) + len(test)))
    x, y = test[0]
    assert x.shape == y.shape == (64,) and x.dtype == torch.int64
    assert torch.equal(x[1:], y[:-1])  # y is the next character of each of x's
    text = "".join(TEXT_VOCAB[i] for i in x.tolist())
    assert len(TEXT_VOCAB) == 96 and text.isascii()
    train, test = load_split(DataSpec(name="diabetes"), "train"), load_split(DataSpec(name="diabetes"), "test")
    assert (len(train), len(test)) == (354, 88) and test[0][0].shape == (10,) and test[0][1].shape == (1,)
    both = torch.cat([train.targets, test.targets])
    assert float(both.mean()) == pytest.approx(0, abs=1e-6) and float(both.std(correction=0)) == pytest.approx(1, abs=1e-5)


# ---------------------------------------------------------------- the scenario's field

REGRESSION = {
    "name": "mse-tiny", "seed": 5,
    "model": {"name": "builtin:diabetes-mlp"},
    "data": {"name": "diabetes", "split": "test", "batch_size": 16, "calibration": {"split": "train", "count": 64}},
    "hardware": {"adc": {"bits": 6}, "error": {"model": "proportional", "sigma": 0.1},
                 "read_noise": {"model": "independent", "sigma": 0.05}},
    "sweep": {"grid": {"hardware.error.sigma": [0.0, 0.2]}},
    "metric": "mse",
    "trials": 4,
    "execution": {"shard_images": 32, "trials_per_task": 2, "workers": 1},
}


def _scenario(**changes) -> str:
    return yaml.safe_dump({**REGRESSION, **changes}, sort_keys=False)


def test_metric_field_validation():
    assert parse_scenario(_scenario()).metric_info == {"name": "mse", "transform": "identity", "lower_is_better": True}
    sc = parse_scenario(_scenario(metric={"factory": "test_metrics:abs_error", "kwargs": {"scale": 2.0}}))
    assert sc.metric_name == "abs_error" and sc.metric_info["lower_is_better"]
    for metric, message in (("top3", "metric"), ({"factory": "nocolon"}, "factory"),
                            ({"factory": "a:b", "name": "top1"}, "cannot name a metric"),
                            ({"factory": "a:b", "name": "Bad Name"}, "cannot name a metric")):
        with pytest.raises(ScenarioError, match=message):
            parse_scenario(_scenario(metric=metric))
    with pytest.raises(ScenarioError, match="per_image"):
        parse_scenario(_scenario(output={"path": "x.zarr", "per_image": True}))
    # an SE target in the metric's units may exceed 1 for a loss, never for an accuracy
    assert parse_scenario(_scenario(trials={"target_se": 2.0, "min": 2, "max": 8})).adaptive.target_se == 2.0
    with pytest.raises(ScenarioError, match="not below 1"):
        parse_scenario(_scenario(metric="top1", trials={"target_se": 2.0, "min": 2, "max": 8}))


def test_fingerprint_holds_the_metric_unless_top1():
    base = {k: v for k, v in REGRESSION.items() if k != "metric"}
    plain = parse_scenario(yaml.safe_dump(base))
    assert parse_scenario(yaml.safe_dump({**base, "metric": "top1"})).fingerprint == plain.fingerprint
    assert parse_scenario(yaml.safe_dump({**base, "metric": "top5"})).fingerprint != plain.fingerprint
    assert parse_scenario(yaml.safe_dump({**base, "metric": "mse"})).fingerprint != plain.fingerprint


def test_worker_runs_a_factory_metric(tmp_path):
    sc = parse_scenario(_scenario(metric={"factory": "test_metrics:abs_error", "kwargs": {"scale": 2.0}},
                                  output=str(tmp_path / "x.zarr")))
    worker = Worker(sc)
    result = worker.digital(DigitalTask(0, 0, 32))
    assert result.correct_top1 is None and result.moments.shape == (2, len(stats.MOMENTS))
    ds = evaluation_dataset(sc.data)
    x = torch.stack([ds[i][0] for i in range(32)])
    y = torch.stack([ds[i][1] for i in range(32)])
    with torch.no_grad():
        expected = 2 * (load_model(sc.model)(x) - y).abs().mean(-1).double()
    assert result.moments[:, 0].sum() == pytest.approx(float(expected.sum()), rel=1e-6)
    assert result.moments[:, 1].sum() == 32


# ---------------------------------------------------------------- the store


def _results(ds: xr.Dataset) -> xr.Dataset:
    out = ds[["mse", "moments", "n_images", "n_trials", "complete", "digital_mse", "digital_moments"]]
    return out.drop_attrs()


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mse")
    sc = parse_scenario(_scenario(output=str(d / "a.zarr")))
    return sc, run_scenario(sc, progress=False)


def test_regression_store_holds_the_metric(regression_run):
    sc, ds = regression_run
    assert ds.attrs["layout"]["metric"]["name"] == "mse" and "top1" not in ds
    assert dict(ds["mse"].sizes) == {"sigma": 2, "trial": 4}
    # the digital model's mse, computed here: mean squared error over the evaluated patients
    test = load_split(DataSpec(name="diabetes"), "test")
    with torch.no_grad():
        direct = float(((load_model(sc.model)(test.images).double() - test.targets.double()) ** 2).mean())
    assert float(ds["digital_mse"]) == pytest.approx(direct, rel=1e-6)
    assert int(ds["digital_moments"].sel(moment="count")) == len(test)
    # programming errors make it worse: chips spread, their mean above digital at sigma 0.2
    assert float(ds["mse"].sel(sigma=0.2).mean()) > float(ds["digital_mse"])
    assert float(ds["mse"].sel(sigma=0.2).std()) > 0


def test_numbers_do_not_depend_on_the_cut_of_the_work(regression_run, tmp_path):
    """Shards of 16 images (one batch) and blocks of 1 chip against shards of 32 and blocks of 2:
    the same numbers, bit for bit (the sums are added per global batch, in batch order)."""
    sc, reference = regression_run
    other = parse_scenario(_scenario(execution={"shard_images": 16, "trials_per_task": 1, "workers": 1},
                                     output=str(tmp_path / "b.zarr")))
    assert other.fingerprint == sc.fingerprint
    xr.testing.assert_identical(_results(run_scenario(other, progress=False)), _results(reference))


def test_adaptive_trials_stop_on_the_metric(tmp_path):
    sc = parse_scenario(_scenario(trials={"target_se": 0.2, "min": 2, "max": 6},
                                  execution={"shard_images": 96, "trials_per_task": 2, "workers": 1},
                                  output=str(tmp_path / "c.zarr")))
    ds = run_scenario(sc, progress=False)
    from mcsim.report import image_se

    for sigma in (0.0, 0.2):
        point = ds.sel(sigma=sigma)
        chips = int(point["n_trials"])
        values = point["mse"].values[:chips]
        se = stats.se_mean(values, int(point["n_images"].max()), image_se(point, "mse").values[:chips])
        assert bool(point["complete"]) and (se <= 0.2 or chips == 6)
        assert np.isnan(point["mse"].values[chips:]).all()


# ---------------------------------------------------------------- end to end


def test_perplexity_scenario_through_the_cli(tmp_path):
    """The text LSTM scored by perplexity: `mcsim run`, then `mcsim report` and `mcsim plot`."""
    with open("scenarios/cpu/17_text_perplexity.yaml") as f:
        data = yaml.safe_load(f)
    data["data"].update(limit=32, calibration={"split": "train", "count": 32})
    data["sweep"] = {"grid": {"hardware.error.sigma": [0.0, 0.2]}}
    data.update(trials=2, output=str(tmp_path / "ppl.zarr"), execution={"shard_images": 32, "trials_per_task": 2,
                                                                        "workers": 1})
    path = tmp_path / "ppl.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("run", path)
    assert result.exit_code == 0, result.output
    assert "done:" in result.output and "perplexity (mean over 2 trials)" in result.output
    report = invoke("report", tmp_path / "ppl.zarr", "--yield", "1.0", "--compare", "sigma")
    assert report.exit_code == 0, report.output
    assert "perplexity (lower is better)" in report.output and "digital model: perplexity" in report.output
    assert "perplexity <= digital + 1" in report.output and "paired differences along sigma" in report.output
    from mcsim.api import open_result

    ds = open_result(tmp_path / "ppl.zarr")
    digital = float(ds["digital_perplexity"])
    assert 1 < digital < len(TEXT_VOCAB) / 4  # a trained model: far better than uniform guessing
    plot = invoke("plot", tmp_path / "ppl.zarr", "-o", tmp_path / "ppl.png")
    assert plot.exit_code == 0 and (tmp_path / "ppl.png").stat().st_size > 0
    bad = invoke("plot", tmp_path / "ppl.zarr", "--metric", "top1", "-o", tmp_path / "x.png")
    assert bad.exit_code == 2 and "--metric: 'top1' is not perplexity" in bad.output


def test_a_metric_that_cannot_score_the_outputs_is_an_input_error(tmp_path):
    """Checked on two images before anything is written: exit 2, no store."""
    path = tmp_path / "bad.yaml"
    path.write_text(_scenario(metric="perplexity", output=str(tmp_path / "bad.zarr")))
    result = invoke("run", path)
    assert result.exit_code == 2 and "perplexity scores logits" in result.output, result.output
    assert not (tmp_path / "bad.zarr").exists()
