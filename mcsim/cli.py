"""The ``mcsim`` command line: run, validate, report, plot.

Exit codes: 0 success; 1 the run failed (a task failed after its retries: a
:class:`~mcsim.errors.RunFailure`); 2 bad input (an invalid scenario, missing data or model, a
result store that may not be used: an :class:`~mcsim.errors.InputError`); 130 interrupted.
Bad input is reported in one paragraph, without a traceback, and nothing is written.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer

from mcsim.errors import InputError, RunFailure
from mcsim.progress import make_console as _console

app = typer.Typer(
    name="mcsim",
    help="Monte Carlo accuracy of neural networks on analog in-memory-computing chips.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


#: How library messages spell a fix (the Python API's keyword arguments) -> this CLI's option.
_OPTIONS = {"overwrite=True": "--overwrite", "partial=True": "--partial", "address=": "--address "}


def _cli_words(err: BaseException) -> str:
    """The message of ``err`` with the Python API's keyword arguments named as this CLI's options."""
    text = str(err)
    for python, option in _OPTIONS.items():
        text = re.sub(rf"\b{re.escape(python)}", option, text)
    return text


def _fail(message: str, code: int) -> None:
    _console(stderr=True).print(f"error: {message}", markup=False)
    raise typer.Exit(code)


class _Guard:
    """Turns mcsim's errors (:mod:`mcsim.errors`) into a clear message and an exit code by their
    branch; ``source`` (the scenario file) prefixes the messages about one of its settings
    (:attr:`~mcsim.errors.InputError.in_scenario`: data, model, device), as scenario errors have it
    already."""

    def __init__(self, source: Optional[Path] = None):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or issubclass(exc_type, (typer.Exit, SystemExit)):
            return False
        if issubclass(exc_type, KeyboardInterrupt):
            _fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
        if issubclass(exc_type, InputError):
            prefix = f"{self.source}: " if self.source is not None and exc.in_scenario else ""
            _fail(prefix + _cli_words(exc), EXIT_BAD_INPUT)
        if issubclass(exc_type, RunFailure):  # verbatim: it may hold a task's traceback
            _fail(f"{exc}\nThe results so far are kept; run again to resume.", EXIT_FAILED)
        return False


ScenarioArg = typer.Argument(..., help="the scenario YAML file", show_default=False)
StoreArg = typer.Argument(..., help="a result store (path or fsspec URL) written by `mcsim run`",
                          show_default=False)


@app.command()
def run(
    scenario: Path = ScenarioArg,
    overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing result store first "
                                   "(also one of another scenario) and start again"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the tasks (and what a resume would do); "
                                 "compute and write nothing"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="result store (path or fsspec URL); "
                                         "default: the scenario's `output`"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="worker processes (default: "
                                          "execution.workers, else one per two cores)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    address: Optional[str] = typer.Option(None, "--address", help="run the tasks on Ray: `local` starts a "
                                          "Ray instance on this machine; `auto`, `host:6379` or "
                                          "`ray://host:10001` use a running cluster. Default: local worker "
                                          "processes, no Ray"),
) -> None:
    """Run a scenario: every sweep point, every trial, into a Zarr result store.

    An interrupted run resumes where it stopped when run again: only the missing tasks run.
    """
    with _Guard(scenario):
        from mcsim.api import run_scenario
        from mcsim.scenario import load_scenario

        sc = load_scenario(scenario)
        ds = run_scenario(sc, overwrite=overwrite, dry_run=dry_run, progress=not quiet or dry_run,
                          output=output, workers=workers, address=address)
        if ds is not None and not quiet:
            from mcsim.report import metric_info, metrics_of, summarize, trials_text

            metric = metrics_of(ds)[0]
            table = summarize(ds, metrics=(metric,))
            best, worst = table["mean"].max(), table["mean"].min()
            what = "top-1 accuracy" if metric_info(ds) is None else metric
            _console(stderr=True).print(
                f"done: {output or sc.output}; {what} (mean over {trials_text(ds)} trials) "
                f"from {worst:.4f} to {best:.4f} over {len(table)} sweep point(s); digital "
                f"{float(ds[f'digital_{metric}']):.4f}. See `mcsim report`.", markup=False)


@app.command()
def validate(scenario: Path = ScenarioArg) -> None:
    """Check a scenario file and show its sweep; loads no data, and the model only when per-layer
    settings or a layer sweep need its layer names (a built-in trains then, once)."""
    with _Guard(scenario):
        from mcsim.runner.driver import sweep_plan
        from mcsim.scenario import load_scenario

        sc = load_scenario(scenario)
        plan = sweep_plan(sc)
        dims = " x ".join(f"{d} {n}" for d, n in zip(plan.dims, plan.shape)) or "no sweep"
        con = _console()
        con.print(f"{scenario}: valid scenario {sc.name!r} (fingerprint {sc.fingerprint[:12]})", markup=False)
        con.print(f"  model {sc.model.name or sc.model.factory}; data {sc.data.name}/{sc.data.split}"
                  f"{'' if sc.data.limit is None else f' (limit {sc.data.limit})'}"
                  f"{'' if sc.metric == 'top1' else f'; metric {sc.metric_name}'}", markup=False)
        a = sc.adaptive
        trials = (f"{sc.trials} trials each" if a is None else
                  f"{a.min} to {a.max} trials each, until the mean's SE <= {a.target_se:g}")
        con.print(f"  {plan.size} sweep point(s) ({dims}), {trials}; output {sc.output}", markup=False)
        for name, values in plan.coords.items():
            if name != "point":
                con.print(f"  {name}: {values}", markup=False)


@app.command()
def report(
    store: str = StoreArg,
    csv: Optional[Path] = typer.Option(None, "--csv", help="also write the statistics to this CSV file"),
    partial: bool = typer.Option(False, "--partial", help="report an unfinished run (images done so far)"),
    energy: bool = typer.Option(False, "--energy", help="add the mean energy per image, total and by component"),
    yield_pts: Optional[float] = typer.Option(
        None, "--yield", metavar="POINTS",
        help="add the yield: the share of chips within POINTS accuracy points (1.0 = 1 %) of digital, "
             "with its 95% Wilson interval; a loss metric (mse, perplexity): POINTS in its own units, "
             "chips at most that much above digital"),
    quantile: Optional[float] = typer.Option(
        None, "--quantile", metavar="Q",
        help="add the Q-quantile chip (0.01: the worst 1%) with its 95% order-statistic interval"),
    compare: Optional[str] = typer.Option(
        None, "--compare", metavar="DIM[=A,B,...]",
        help="paired differences between the values of a swept dim (all pairs, or those listed), chip by "
             "chip, with the variance reduction against unpaired chips"),
    per_class_: bool = typer.Option(
        False, "--per-class", help="add the top-1 accuracy per class (needs the per-image outcomes: "
                                   "output: {path: ..., per_image: true})"),
) -> None:
    """Accuracy statistics over trials per sweep point (or the scenario's metric: mse, perplexity,
    a factory's): mean, std, min, 5th/95th percentile, the mean's standard error with both error
    sources (chips and images) and its 95% interval (docs/physics.md section 14); with --energy, the
    first-order energy per image (mean over trials) and its components."""
    with _Guard():
        from rich.table import Table

        from mcsim.api import open_result
        import numpy as np
        import pandas as pd

        from mcsim.report import ENERGY_COLUMNS, energy_unit, has_energy, point_labels, summarize, summarize_energy, trials_text
        from mcsim.report import lower_is_better, metric_info

        if quantile is not None and not 0 < quantile < 1:
            _fail(f"--quantile: {quantile} is not in (0, 1); give e.g. 0.01 for the worst 1% of chips",
                  EXIT_BAD_INPUT)
        ds = open_result(store, partial=partial)
        info = metric_info(ds)
        _check_yield(yield_pts, info)
        pct = info is None  # accuracies in %, a loss metric in its own units
        num = (lambda v, d=2: f"{100 * v:.{d}f}") if pct else (lambda v, d=2: f"{v:.4g}")
        if per_class_ and "image_top1" not in ds:
            _fail(f"--per-class: {store} keeps no per-image outcomes; run its scenario with "
                  "output: {path: ..., per_image: true}", EXIT_BAD_INPUT)
        pairs = None
        if compare is not None:
            pairs = _compare_table(ds, compare)
        delta = None if yield_pts is None else yield_pts / 100 if pct else yield_pts
        df = summarize(ds, yield_delta=delta, quantile=quantile)
        labels = point_labels(ds)
        if energy:
            if not has_energy(ds):
                _fail(f"--energy: {store} has no energy (its scenario ran with energy: false); run it with "
                      "energy: true", EXIT_BAD_INPUT)
            per_point = summarize_energy(ds)[list(ENERGY_COLUMNS)]  # the points in summarize's order
            per_row = per_point.iloc[np.arange(len(df)) // (len(df) // len(per_point))].reset_index(drop=True)
            df = pd.concat([df.reset_index(drop=True), per_row], axis=1)
            unit, factor = energy_unit(float(df["energy"].max()))
        if csv is not None:
            df.to_csv(csv, index=False)
        what = ("accuracy in %" if pct else
                f"{info['name']} ({'lower' if info['lower_is_better'] else 'higher'} is better)")
        table = Table(title=f"{ds.attrs.get('name', store)}: {what} over {trials_text(ds)} trials "
                      f"(chips), {int(ds['n_images'].max())} images; SE of the mean from chips and images, "
                      f"SE img: images alone ({'binomial' if pct else 'from each chip loss sums'})")
        for name in labels:
            table.add_column(name, no_wrap=True, min_width=max(len(_fmt(v)) for v in df[name]))
        table.add_column("metric")
        for head in ("mean", "std", "min", "p5", "p95", "SE img", "SE", "95% CI"):
            table.add_column(head, justify="right", no_wrap=True)
        if delta is not None:
            table.add_column(f"yield {'+' if lower_is_better(ds) else '-'}{yield_pts:g}", justify="right",
                             no_wrap=True)
            table.add_column("95% CI", justify="right", no_wrap=True)
        if quantile is not None:
            table.add_column(f"q{quantile:g} chip", justify="right", no_wrap=True)
            table.add_column("95% CI", justify="right", no_wrap=True)
        if energy:
            table.add_column(f"E/image ({unit})", justify="right")
            for head in ("E std", "ADC", "DAC", "array", "digital"):
                table.add_column(head, justify="right")
        for i, row in df.iterrows():
            first = row["metric"] == df["metric"].iloc[0]
            cells = [f"{factor * row[c]:.4g}" if first else "" for c in ENERGY_COLUMNS] if energy else []
            extra = []
            if delta is not None:
                extra += [f"{100 * row['yield']:.1f}", _interval(row["yield_lo"], row["yield_hi"], 1)]
            if quantile is not None:
                extra += [num(row["q_acc"]), _interval(row["q_lo"], row["q_hi"], 2, num)]
            table.add_row(*[_fmt(row[name]) if first else "" for name in labels], row["metric"],
                          *[num(row[c]) for c in ("mean", "std", "min", "p5", "p95", "se_binom", "se")],
                          _interval(row["ci_lo"], row["ci_hi"], 2, num), *extra, *cells, end_section=not first)
        con = _console()
        from rich.measure import Measurement

        need = Measurement.get(con, con.options.update_width(1000), table).maximum
        if need > con.width:  # never squeeze the numbers: a wider table beats truncated cells
            con = _console(width=need)
        con.print(table)
        if pct:
            con.print(f"digital model: top1 {100 * float(ds['digital_top1']):.2f}%, "
                      f"top5 {100 * float(ds['digital_top5']):.2f}%", markup=False)
        else:
            con.print(f"digital model: {info['name']} {float(ds['digital_' + info['name']]):.4g}", markup=False)
        if delta is not None and pct:
            con.print(f"yield -{yield_pts:g}: % of chips with accuracy >= digital - {yield_pts:g} points (Wilson "
                      "interval)", markup=False)
        elif delta is not None:
            rel = "<= digital +" if info["lower_is_better"] else ">= digital -"
            con.print(f"yield: % of chips with {info['name']} {rel} {yield_pts:g} (Wilson interval)", markup=False)
        if quantile is not None:
            worst = "fall below" if pct or not info["lower_is_better"] else "rise above"
            con.print(f"q{quantile:g} chip: the {info['name'] if info else 'accuracy'} the worst "
                      f"{100 * quantile:g}% of chips {worst} (order-statistic interval; -inf/inf: too few chips to "
                      "bound that end)", markup=False)
        if energy:
            con.print(f"energy per image in {unit}, mean over trials (E std: over trials); first order, priced with "
                      "hardware.energy (docs/physics.md section 12)", markup=False)
        if pairs is not None:
            con.print(pairs)
            from mcsim.report import chips_common

            if not chips_common(ds):
                con.print("these chips were drawn per point (execution.chips: per_point): the points share no "
                          "chip, so pairing cannot reduce the error; run with execution.chips: common",
                          markup=False)
        if per_class_:
            con.print(_per_class_table(ds))
        _print_layer_ranking(con, ds)
        if csv is not None:
            con.print(f"wrote {csv}", markup=False)


def _interval(lo: float, hi: float, digits: int, num=None) -> str:
    """``[lo, hi]`` in % (or as ``num(value, digits)`` writes a number), an open end as -inf/inf."""
    import math

    num = num or (lambda v, d: f"{100 * v:.{d}f}")
    end = lambda v: ("-inf" if v < 0 else "inf") if math.isinf(v) else num(v, digits)
    return f"[{end(lo)}, {end(hi)}]"


def _check_yield(yield_pts: Optional[float], info: Optional[dict]) -> None:
    """``--yield``: accuracy points in [0, 100]; a loss metric's own units, at least 0."""
    if yield_pts is None:
        return
    if info is not None and yield_pts < 0:
        _fail(f"--yield: {yield_pts} is negative; give how much {info['name']} a chip may lose against digital, "
              "in its own units", EXIT_BAD_INPUT)
    if info is None and not 0 <= yield_pts <= 100:
        _fail(f"--yield: {yield_pts} is not an accuracy in points between 0 and 100; give e.g. 1.0 for "
              "chips within 1 point of digital", EXIT_BAD_INPUT)


def _per_class_table(ds):
    """The table of ``--per-class``: top-1 per class and point (mcsim.report.per_class)."""
    from rich.table import Table

    from mcsim.report import per_class, point_labels, trials_text

    df = per_class(ds)
    table = Table(title=f"top-1 accuracy in % per class over {trials_text(ds)} chips; SE from chips and the "
                        "class's images")
    names = point_labels(ds)
    for name in names + ["class", "images", "mean", "std", "SE", "95% CI"]:
        table.add_column(name, no_wrap=True, justify="left" if name in names else "right")
    for _, row in df.iterrows():
        table.add_row(*[_fmt(row[n]) for n in names], str(row["class"]), str(row["images"]),
                      f"{100 * row['mean']:.2f}", f"{100 * row['std']:.2f}", f"{100 * row['se']:.2f}",
                      _interval(row["ci_lo"], row["ci_hi"], 2))
    return table


def _compare_table(ds, spec: str):
    """The table of ``--compare DIM[=A,B,...]``: paired differences of top-1, or of the result's loss
    metric (mcsim.report.compare)."""
    from rich.table import Table

    from mcsim.report import compare, metrics_of

    metric = metrics_of(ds)[0]
    pct = metric == "top1"
    unit, scale = ("points", 100) if pct else ("", 1)
    dim, _, listed = spec.partition("=")
    try:
        df = compare(ds, dim.strip(), [v.strip() for v in listed.split(",")] if listed else None)
    except ValueError as exc:
        _fail(f"--compare: {str(exc).removeprefix('compare: ')}", EXIT_BAD_INPUT)
    stat_columns = ("a", "b", "diff", "se_paired", "se_unpaired", "se_unpaired_chips", "reduction", "trials")
    labels = [c for c in df.columns if c not in stat_columns]
    table = Table(title=f"paired differences along {dim}: {metric} a - b{' in ' + unit if unit else ''} over the same "
                  f"{int(df['trials'].iloc[0])} chips and images; SE paired: std_t(a_t - b_t)/sqrt(T); SE unpaired: "
                  "independent chips, from their spread alone and with the images' error, sqrt(SE_a^2 + SE_b^2); "
                  "variance reduction: (SE unpaired chips / SE paired)^2")
    for name in labels + ["a", "b", "a - b", "SE paired", "SE unpaired chips", "chips+images", "var. reduction"]:
        table.add_column(name, justify="left" if name in labels + ["a", "b"] else "right", no_wrap=True)
    for _, row in df.iterrows():
        gain = "-" if row["reduction"] != row["reduction"] else f"{row['reduction']:.1f}x"
        table.add_row(*[_fmt(row[n]) for n in labels], _fmt(row["a"]), _fmt(row["b"]),
                      f"{scale * row['diff']:+.2f}" if pct else f"{row['diff']:+.4g}",
                      *[f"{scale * row[c]:.3f}" if pct else f"{row[c]:.3g}"
                        for c in ("se_paired", "se_unpaired_chips", "se_unpaired")], gain)
    return table


def _print_layer_ranking(con, ds) -> None:
    """A layer sensitivity result: the layers ranked by the top-1 accuracy each costs."""
    from rich.table import Table

    from mcsim.report import layer_sensitivity, layer_sweep_mode, metrics_of, trials_text

    mode = layer_sweep_mode(ds)
    if mode is None:
        return
    metric = metrics_of(ds)[0]
    num = (lambda v: f"{100 * v:.2f}") if metric == "top1" else (lambda v: f"{v:.4g}")
    df = layer_sensitivity(ds, metric)
    labels = [c for c in df.columns if c not in ("rank", "layer", "mean", "se", "cost", "cost_se",
                                                 "loss_vs_digital", "digital", "reference", "mode")]
    cost = ("lost with only this layer analog (vs digital)" if mode == "only_analog"
            else f"recovered with only this layer ideal (vs every layer analog, {metric} "
                 f"{num(df['reference'].iloc[0])}{'%' if metric == 'top1' else ''})")
    what = "top1 accuracy" if metric == "top1" else metric
    table = Table(title=f"layer sensitivity ({mode}): {what} {cost}{', in %' if metric == 'top1' else ''}; "
                  "+-: Monte Carlo "
                  f"standard error std/sqrt({trials_text(ds)} trials)")
    for name in labels:
        table.add_column(name, no_wrap=True)
    for head in ("rank", "layer", metric, "cost"):
        table.add_column(head, justify="right" if head != "layer" else "left", no_wrap=True)
    for _, row in df.iterrows():
        table.add_row(*[_fmt(row[n]) for n in labels], str(row["rank"]), str(row["layer"]),
                      f"{num(row['mean'])} +- {num(row['se'])}", f"{num(row['cost'])} +- {num(row['cost_se'])}",
                      end_section=row["rank"] == df["rank"].max() and bool(labels))
    con.print(table)


@app.command()
def plot(
    store: str = StoreArg,
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="PNG file (default: next to a local store, <store>.<metric>.png)"),
    metric: Optional[str] = typer.Option(None, "--metric",
                                         help="top1 or top5 (default top1); a loss metric's result: its name"),
    band: str = typer.Option("std", "--band", help="std (+-1 std) or percentile (5-95)"),
    partial: bool = typer.Option(False, "--partial", help="plot an unfinished run"),
    energy: bool = typer.Option(False, "--energy",
                                help="accuracy against energy per image, one point per sweep point"),
    yield_pts: Optional[float] = typer.Option(
        None, "--yield", metavar="POINTS",
        help="plot the yield instead: the share of chips within POINTS accuracy points of digital"),
) -> None:
    """Plot accuracy against the first numeric swept setting, one line per value of the other
    dims: the chip spread as a band, the mean's 95% interval (chips and images) as error bars, the
    digital accuracy dashed. With --energy: accuracy against the energy per image, one point per
    sweep point, error bars over the chips. With --yield: the yield with its Wilson interval."""
    with _Guard():
        if band not in ("std", "percentile"):
            _fail(f"--band: {band!r} is not std or percentile", EXIT_BAD_INPUT)
        from mcsim.api import open_result
        if yield_pts is not None and energy:
            _fail("--yield and --energy draw different figures; give one", EXIT_BAD_INPUT)
        from mcsim.report import has_energy, metric_info, metrics_of, plot_energy, plot_yield
        from mcsim.report import plot as draw

        ds = open_result(store, partial=partial)
        metric = metric or metrics_of(ds)[0]
        if metric not in metrics_of(ds):
            _fail(f"--metric: {metric!r} is not {' or '.join(metrics_of(ds))}", EXIT_BAD_INPUT)
        info = metric_info(ds)
        _check_yield(yield_pts, info)
        if energy and not has_energy(ds):
            _fail(f"--energy: {store} has no energy (its scenario ran with energy: false); run it with "
                  "energy: true", EXIT_BAD_INPUT)
        if output is None:
            if "://" in store:
                _fail("--output: give a PNG path for a remote store", EXIT_BAD_INPUT)
            kind = ".energy" if energy else ".yield" if yield_pts is not None else ""
            output = Path(store.rstrip("/").removesuffix(".zarr") + f".{metric}{kind}.png")
        if energy:
            plot_energy(ds, str(output), metric=metric)
        elif yield_pts is not None:
            plot_yield(ds, str(output), yield_pts / 100 if info is None else yield_pts, metric=metric)
        else:
            draw(ds, str(output), metric=metric, band=band)
        _console().print(f"wrote {output}", markup=False)


# ---------------------------------------------------------------- Ray jobs

JobArg = typer.Argument(..., help="a job id printed by `mcsim submit`", show_default=False)
DashboardOpt = typer.Option(..., "--address", help="the cluster's dashboard, e.g. http://127.0.0.1:8265 "
                            "through `ray dashboard`'s SSH tunnel; the Ray token goes with every request, from "
                            "$RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token", show_default=False)


def _job_client(address: str):
    """A JobSubmissionClient of ``address`` that sends the Ray token when there is one
    (:mod:`mcsim.runner.auth`); an unreachable address, a missing or a wrong token are bad input
    (exit 2)."""
    from mcsim.runner.auth import auth_headers
    from mcsim.runner.ray_executor import ray_env

    ray_env()
    from ray.job_submission import JobSubmissionClient

    if "://" not in address:
        address = "http://" + address
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except InputError as err:  # an unreadable $RAY_AUTH_TOKEN_PATH
        _fail(str(err), EXIT_BAD_INPUT)
    except Exception as err:  # noqa: BLE001 - ConnectionError and friends: all mean unreachable
        _refused(err, address)
        _fail(f"--address: cannot reach a Ray dashboard at {address} ({type(err).__name__}: "
              f"{_first_line(err)}); give the head's dashboard address, e.g. http://HEAD:8265",
              EXIT_BAD_INPUT)


def _refused(err: BaseException, address: str) -> None:
    """Exit 2 with mcsim's message when ``err`` is the cluster refusing the token (or its absence)."""
    from mcsim.runner.auth import refusal

    auth = refusal(err, address)
    if auth is not None:
        _fail(str(auth), EXIT_BAD_INPUT)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _job_call(call, job: str, address: str):
    try:
        return call()
    except Exception as err:  # noqa: BLE001
        _refused(err, address)
        text = str(err)
        if "404" in text or "does not exist" in text or "not found" in text.lower():
            _fail(f"no job {job!r} on the cluster at {address}", EXIT_BAD_INPUT)
        _fail(f"the cluster at {address} did not answer about job {job!r}: {_first_line(err)}", EXIT_BAD_INPUT)


@app.command()
def submit(
    scenario: Path = ScenarioArg,
    address: str = DashboardOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing result store first"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="result store as the cluster sees it: "
                                         "an fsspec URL (s3://...) for a remote cluster; default: the "
                                         "scenario's `output`"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray workers (default: "
                                          "execution.workers, else what the cluster offers)"),
) -> None:
    """Submit a run to a Ray cluster as a Ray Job; prints the job id and returns at once.

    The job runs `mcsim run SCENARIO --address auto` on the cluster (which must have mcsim
    installed) with the scenario file shipped in its working_dir. Follow it with `mcsim status`
    and `mcsim logs`; read the results where the job writes them (`--output`).
    """
    with _Guard(scenario):
        import shlex
        import shutil
        import tempfile

        from mcsim.scenario import load_scenario

        sc = load_scenario(scenario)  # bad scenarios fail here, before anything is submitted
        client = _job_client(address)
        target = output or sc.output
        if "://" not in target and not Path(target).is_absolute():
            # a relative path would land in the job's temporary working_dir: make it absolute
            target = str(Path(target).resolve())
        args = ["mcsim", "run", scenario.name, "--address", "auto", "--output", target]
        if overwrite:
            args.append("--overwrite")
        if workers:
            args += ["--workers", str(workers)]
        with tempfile.TemporaryDirectory(prefix="mcsim-submit-") as tmp:
            shutil.copyfile(scenario, Path(tmp) / scenario.name)
            try:
                job = client.submit_job(entrypoint=shlex.join(args), runtime_env={"working_dir": tmp},
                                        metadata={"mcsim_scenario": sc.name, "mcsim_output": target})
            except Exception as err:  # noqa: BLE001
                _refused(err, address)
                _fail(f"the cluster at {address} refused the job: {_first_line(err)}", EXIT_BAD_INPUT)
        con = _console()
        con.print(job, markup=False)
        err = _console(stderr=True)
        err.print(f"submitted {sc.name!r} as job {job}; results go to {target}", markup=False)
        err.print(f"follow it with: mcsim status {job} --address {address}  /  "
                  f"mcsim logs {job} --address {address} --follow", markup=False)


@app.command()
def status(job: str = JobArg, address: str = DashboardOpt) -> None:
    """The state of a submitted job (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    client = _job_client(address)
    info = _job_call(lambda: client.get_job_info(job), job, address)
    con = _console()
    con.print(str(info.status.value if hasattr(info.status, "value") else info.status), markup=False)
    if info.message:
        _console(stderr=True).print(info.message, markup=False)


@app.command()
def logs(
    job: str = JobArg,
    address: str = DashboardOpt,
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends"),
) -> None:
    """The output of a submitted job (its progress, and any error)."""
    client = _job_client(address)
    _job_call(lambda: client.get_job_info(job), job, address)  # an unknown job: exit 2
    if not follow:
        sys.stdout.write(_job_call(lambda: client.get_job_logs(job), job, address))
        sys.stdout.flush()
        return
    import asyncio

    async def tail():
        async for chunk in client.tail_job_logs(job):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except Exception as err:  # noqa: BLE001 - a refused websocket; anything else as it is
        _refused(err, address)
        raise


def _fmt(v) -> str:
    if isinstance(v, float):
        return "null" if v != v else f"{v:g}"  # NaN: a null setting (e.g. an ideal ADC) beside numbers
    return str(v)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
