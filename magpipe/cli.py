"""`magpipe` command line: one command per stage, plus `run` (all stages) and `demo`.

Configuration: ``run`` and ``demo`` start from ``--config`` (or the defaults); a stage command
continues a run, so it starts from ``--config``, else the run's own ``OUT/config.json``, else
the defaults. Flags override either. Every command records the result as ``OUT/config.json``.

Errors in the input print one line naming the file and the problem and exit
with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Annotated, Optional

import typer

from magpipe.config import RunConfig
from magpipe.errors import ConfigError, MagpipeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Classify magnetic survey grids with autoencoder features and an SVM.")

_state = {"debug": False}

# Flags that set a config field: their help is the field's own description and default (one typed place).
FLAG_FIELDS = {"--patch-size": ("patches", "patch_px"), "--epochs": ("model", "epochs"),
               "--n-patches": ("patches", "n_patches"), "--features": ("svm", "features"),
               "--objective": ("model", "objective"), "--scheduler": ("runtime", "scheduler"),
               "--workers": ("runtime", "workers"), "--device": ("classify", "device"),
               "--nodata": ("ingest", "nodata"), "--band": ("ingest", "band"), "--variable": ("ingest", "variable"),
               "--spacing": ("ingest", "spacing"), "--crs": ("ingest", "crs"),
               "--label-field": ("inputs", "label_field"), "--classes": ("inputs", "classes")}


def field_help(flag: str) -> str:
    """The help of a flag that sets a config field: the field's description, its default and its name."""
    section, name = FLAG_FIELDS[flag]
    field = RunConfig.model_fields[section].default_factory.model_fields[name]
    default = "" if field.default is None else f" Default: {field.default}."
    return f"{field.description}{default} (config: {section}.{name})"


def _flag(flag: str, **kw):
    return typer.Option(flag, help=field_help(flag), **kw)


ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML/JSON config file (see magpipe.config).")]
PatchOpt = Annotated[Optional[str], _flag("--patch-size")]  # a size, or auto (validated by the config)
EpochsOpt = Annotated[Optional[int], _flag("--epochs")]
NPatchOpt = Annotated[Optional[int], _flag("--n-patches")]
FeaturesOpt = Annotated[Optional[str], _flag("--features")]
ObjectiveOpt = Annotated[Optional[str], _flag("--objective")]
SchedOpt = Annotated[Optional[str], _flag("--scheduler", envvar="DASK_SCHEDULER_ADDRESS")]
WorkersOpt = Annotated[Optional[int], _flag("--workers")]
DeviceOpt = Annotated[Optional[str], _flag("--device")]
SerialOpt = Annotated[bool, typer.Option("--serial", help="Classify (and score the splits) in this process, "
                                                          "without Dask.")]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output directory of the run.")]
NodataOpt = Annotated[Optional[float], _flag("--nodata")]
BandOpt = Annotated[Optional[int], _flag("--band")]
VarOpt = Annotated[Optional[str], _flag("--variable")]
SpacingOpt = Annotated[Optional[float], _flag("--spacing")]
CrsOpt = Annotated[Optional[str], _flag("--crs")]
FieldOpt = Annotated[Optional[str], _flag("--label-field")]
ClassesOpt = Annotated[Optional[str], _flag("--classes")]
LayerOpt = Annotated[Optional[list[str]], typer.Option(
    "--layer", help="A further layer of the survey, NAME=PATH (NAME=PATH#BAND for one band; a multi-band file "
    "without a band gives NAME_1 .. NAME_n); repeat for each. Resampled onto the survey's cells (bilinear; "
    "other resampling in the config's inputs.layers). (config: inputs.layers)")]


def main() -> None:
    """The installed ``magpipe`` command (and ``python -m magpipe``): the process's settings and signal
    handling, then the command line. A test runs :data:`app` itself, in its own process."""
    from magpipe.process import configure_process, stop_on_signals

    configure_process()
    with stop_on_signals():
        app(prog_name="magpipe")


class _StderrHandler(logging.StreamHandler):
    """Log lines to whatever ``sys.stderr`` is when they are written (a progress bar or a test's runner
    may have replaced it since the handler was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@app.callback()
def callback(ctx: typer.Context, debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
         quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Every step's detail (each SVM fit, each "
                                               "split), at DEBUG.")] = False) -> None:
    _state["debug"] = debug
    log = logging.getLogger("magpipe")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if not quiet and sys.stderr.isatty():  # bars for the long steps; log lines above them
        from magpipe.progress import log_above_bars, show_bars

        show_bars()
        ctx.with_resource(log_above_bars())


def _config(config: str | None, *, run: str | None = None, patch_size=None, epochs=None, n_patches=None,
            nodata=None, band=None, variable=None, spacing=None, crs=None, scheduler=None, workers=None,
            features=None, objective=None, device=None, **inputs) -> RunConfig:
    """``config`` (else the run's saved config.json when ``run`` is given, else defaults) with the flags applied."""
    from magpipe.io.location import use_storage_options

    if config is None and run is not None:
        from magpipe.io.schema import Layout

        saved = Layout(run).config
        config = saved if _guard(_exists, saved) else None
    cfg = _guard(
        RunConfig.load, config,
        ingest={"nodata": nodata, "band": band, "variable": variable, "spacing": spacing, "crs": crs},
        patches={"patch_px": patch_size, "n_patches": n_patches},
        model={"epochs": epochs, "objective": objective},
        svm={"features": features},
        classify={"device": device},
        runtime={"scheduler": scheduler, "workers": workers},
    )
    use_storage_options(cfg.runtime.storage_options)
    if inputs.get("layers"):
        inputs["layers"] = _guard(_layers, inputs["layers"])
    return _guard(cfg.with_inputs, **inputs)


def _layers(options: list[str]) -> dict[str, str]:
    """``--layer NAME=PATH`` options as the config's name -> path mapping."""
    from magpipe.config import parse_layer

    out: dict[str, str] = {}
    for text in options:
        try:
            name, path = parse_layer(text)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if name in out:
            raise ConfigError(f"--layer {text!r}: layer name '{name}' is given twice; name each layer once")
        out[name] = path
    return out


def _exists(path) -> bool:
    from magpipe.io.location import remote_errors

    with remote_errors(path):
        return path.exists()


def _guard(fn, *args, **kwargs):
    """Run a stage; turn magpipe errors (and unreadable files) into one line and exit 2, and Ctrl-C or
    SIGTERM into one line and 128 + the signal's number, after the stage has unwound."""
    import signal

    try:
        return fn(*args, **kwargs)
    except (MagpipeError, FileNotFoundError, PermissionError) as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        typer.echo(f"\nstopped by {signal.Signals(signum).name}: finished work is kept (completed stores, training "
                   "checkpoint, classified tiles); run the same command again to go on", err=True)
        raise typer.Exit(128 + signum) from None


def _client(cfg: RunConfig, serial: bool):
    import contextlib

    from magpipe.cluster import dask_client

    if serial:
        return contextlib.nullcontext(None)
    return dask_client(cfg.runtime.scheduler, workers=cfg.runtime.workers, gpu=cfg.classify.device != "cpu")


def _with_client(cfg: RunConfig, serial: bool, fn, *args, **kwargs):
    """``fn(*args, client=..., **kwargs)`` with the run's Dask client (None with ``serial``), which is
    closed, and its LocalCluster stopped, however ``fn`` ends."""
    with _client(cfg, serial) as client:
        return fn(*args, client=client, **kwargs)


@app.command()
def ingest(survey: str, out: OutOpt, config: ConfigOpt = None, nodata: NodataOpt = None, band: BandOpt = None,
           variable: VarOpt = None, spacing: SpacingOpt = None, crs: CrsOpt = None, layer: LayerOpt = None) -> None:
    """Read a survey (GeoTIFF, NetCDF, Zarr, CSV/XYZ lines), and any layers beside it, into OUT/survey.zarr."""
    from magpipe.pipeline import run_ingest

    cfg = _config(config, run=out, nodata=nodata, band=band, variable=variable, spacing=spacing, crs=crs,
                  survey=survey, layers=layer)
    typer.echo(_guard(run_ingest, out, cfg))


@app.command()
def labels(labels: str, out: OutOpt, label_field: FieldOpt = None, classes: ClassesOpt = None,
           config: ConfigOpt = None) -> None:
    """Put labels (raster, polygons or points) onto OUT/survey.zarr's grid."""
    from magpipe.pipeline import run_labels

    cfg = _config(config, run=out, labels=labels, label_field=label_field, classes=classes)
    typer.echo(_guard(run_labels, out, cfg))


@app.command()
def train(out: OutOpt, config: ConfigOpt = None, patch_size: PatchOpt = None, epochs: EpochsOpt = None,
          n_patches: NPatchOpt = None, features: FeaturesOpt = None, objective: ObjectiveOpt = None) -> None:
    """Choose the patch size (with auto), sample patches, train the autoencoder and the SVM -> OUT/patch_size.json,
    OUT/patches.zarr, OUT/model/."""
    from magpipe.pipeline import run_patch_size, run_patches, run_train

    cfg = _config(config, run=out, patch_size=patch_size, epochs=epochs, n_patches=n_patches, features=features,
                  objective=objective)
    _guard(run_patch_size, out, cfg)
    _guard(run_patches, out, cfg)
    typer.echo(_guard(run_train, out, cfg))


@app.command()
def classify(out: OutOpt, config: ConfigOpt = None, model: Annotated[Optional[str], typer.Option(
        "--model", help="Model bundle to apply (default OUT/model).")] = None, scheduler: SchedOpt = None,
             workers: WorkersOpt = None, serial: SerialOpt = False, device: DeviceOpt = None) -> None:
    """Classify every valid cell of OUT/survey.zarr into OUT/classified.zarr."""
    from magpipe.pipeline import run_classify

    cfg = _config(config, run=out, scheduler=scheduler, workers=workers, device=device)
    typer.echo(_guard(_with_client, cfg, serial, run_classify, out, cfg, bundle=model))


@app.command()
def evaluate(out: OutOpt, config: ConfigOpt = None, patch_size: PatchOpt = None, scheduler: SchedOpt = None,
             workers: WorkersOpt = None, serial: SerialOpt = False) -> None:
    """Score the learned features against their controls on spatial holdouts -> OUT/report.*, OUT/*.png.
    The splits run in parallel on the Dask cluster (a LocalCluster unless --scheduler)."""
    from magpipe.pipeline import run_evaluate
    from magpipe.report import terminal_summary

    cfg = _config(config, run=out, patch_size=patch_size, scheduler=scheduler, workers=workers)
    typer.echo(terminal_summary(_guard(_with_client, cfg, serial, run_evaluate, out, cfg)))


@app.command()
def export(out: OutOpt, variable: Annotated[str, typer.Option(help="class, confidence or anomaly")] = "class",
           dest: Annotated[Optional[str], typer.Option(help="GeoTIFF path (default OUT/<variable>.tif)")] = None
           ) -> None:
    """Export a layer of OUT/classified.zarr as a GeoTIFF."""
    from magpipe.io.export import export_geotiff
    from magpipe.io.schema import Layout

    lay = Layout(out)
    typer.echo(_guard(export_geotiff, lay.classified, variable, dest or lay.root / f"{variable}.tif"))


TopOpt = Annotated[int, typer.Option("--top", "-k", help="How many places to list.")]


@app.command()
def anomalies(out: OutOpt, top: TopOpt = 10) -> None:
    """The strongest anomalies (reconstruction error) of OUT/classified.zarr, with coordinates."""
    from magpipe.explore import markdown_table, top_anomalies
    from magpipe.io.schema import Layout

    meta = _guard(_bundle_meta, out)
    rows = _guard(top_anomalies, Layout(out).classified, top, patch_px=meta["patch_px"])
    typer.echo(markdown_table(rows, ["rank", "x", "y", "anomaly"]))


@app.command("label-next")
def label_next_cmd(out: OutOpt, top: TopOpt = 10, config: ConfigOpt = None) -> None:
    """Where to label next: the blocks where the classifier is least certain."""
    from magpipe.explore import label_next, markdown_table
    from magpipe.io.schema import Layout

    cfg = _config(config, run=out)
    meta = _guard(_bundle_meta, out)
    rows = _guard(label_next, Layout(out).classified, top, block=cfg.evaluate.block_patches * meta["patch_px"])
    typer.echo(markdown_table(rows, ["rank", "x", "y", "mean_confidence"]))


@app.command()
def similar(out: OutOpt, point: Annotated[Optional[tuple[float, float]], typer.Option(
        "--point", help="Query point X Y in the survey's CRS.")] = None,
            polygon: Annotated[Optional[str], typer.Option("--polygon", help="Query polygons (vector file).")] = None,
            top: TopOpt = 10, model: Annotated[Optional[str], typer.Option(
                "--model", help="Model bundle (default OUT/model).")] = None, config: ConfigOpt = None) -> None:
    """Where else looks like this? Similarity map (OUT/similar.zarr, OUT/similar.png) and top places."""
    from magpipe.explore import markdown_table
    from magpipe.io.schema import Layout
    from magpipe.pipeline import run_similar

    cfg = _config(config, run=out)
    hits = _guard(run_similar, out, cfg, point=point, polygons=polygon, bundle=model, k=top)
    typer.echo(markdown_table(hits, ["rank", "x", "y", "similarity"]))
    typer.echo(f"map: {Layout(out).similar}, {Layout(out).figure('similar')}")


def _bundle_meta(out: str) -> dict:
    from magpipe.bundle import read_bundle_meta
    from magpipe.errors import InputError
    from magpipe.io.schema import Layout

    lay = Layout(out)
    if not (lay.classified / "zarr.json").exists():
        raise InputError(f"{lay.classified}: not found; run `magpipe classify` first")
    return read_bundle_meta(lay.model)


def _run(out: str, cfg: RunConfig, *, serial: bool) -> None:
    from magpipe.pipeline import run_all
    from magpipe.report import terminal_summary

    missing = [f"inputs.{k}" for k in ("survey", "labels") if getattr(cfg.inputs, k) is None]
    if missing:
        _guard(_fail, f"no {' and no '.join(missing)}: give SURVEY and --labels, or a --config that names them "
               "(a run's config.json does)")
    t0 = time.perf_counter()
    if cfg.classify.device == "cpu":  # a cluster only to classify: bad input fails before one starts
        report = _guard(run_all, out, cfg, cluster=lambda: _client(cfg, serial))
    else:  # a GPU is checked against the cluster before any work
        report = _guard(_with_client, cfg, serial, run_all, out, cfg)
    typer.echo("")
    typer.echo(terminal_summary(report))
    typer.echo(f"\n{report['n_train']} training / {report['n_test']} test cells, spatial holdout; "
               f"{time.perf_counter() - t0:.0f} s")
    typer.echo(f"results in {str(out).rstrip('/')}/: {' '.join(_results(out))} *.png")


def _results(out: str) -> list[str]:
    """The names of a finished run's outputs that are there (patch_size.json only with patches.patch_px: auto)."""
    from magpipe.io.schema import Layout

    lay = Layout(out)
    paths = (lay.survey, lay.patch_size, lay.patches, lay.model, lay.classified, lay.report, lay.report_md)
    return [p.name + ("/" if p == lay.model else "") for p in paths if p.exists()]


def _fail(message: str):
    from magpipe.errors import InputError

    raise InputError(message)


@app.command()
def run(survey: Annotated[Optional[str], typer.Argument(help="Survey file (default: the config's inputs.survey).")] = None,
        labels: Annotated[Optional[str], typer.Option("--labels", "-l", help="Label raster or vector file "
                                                       "(default: the config's inputs.labels).")] = None,
        out: OutOpt = ..., label_field: FieldOpt = None, classes: ClassesOpt = None, config: ConfigOpt = None,
        nodata: NodataOpt = None, band: BandOpt = None, variable: VarOpt = None, spacing: SpacingOpt = None,
        crs: CrsOpt = None, patch_size: PatchOpt = None, epochs: EpochsOpt = None, n_patches: NPatchOpt = None,
        features: FeaturesOpt = None, objective: ObjectiveOpt = None, scheduler: SchedOpt = None,
        workers: WorkersOpt = None, serial: SerialOpt = False, device: DeviceOpt = None, layer: LayerOpt = None
        ) -> None:
    """Run every stage: ingest, labels, patch size, patches, train, classify, evaluate.

    To repeat a run: magpipe run --config OLD/config.json --out NEW (same inputs, same options).
    """
    cfg = _config(config, patch_size=patch_size, epochs=epochs, n_patches=n_patches, nodata=nodata, band=band,
                  variable=variable, spacing=spacing, crs=crs, scheduler=scheduler, workers=workers,
                  features=features, objective=objective, device=device, survey=survey, labels=labels,
                  label_field=label_field, classes=classes, layers=layer)
    _run(out, cfg, serial=serial)


@app.command()
def demo(out: Annotated[str, typer.Option("--out", "-o", help="Output directory.")] = "magpipe-demo",
         epochs: EpochsOpt = None, workers: WorkersOpt = None, serial: SerialOpt = False) -> None:
    """Run the whole pipeline on the embedded BGS sample of Great Britain (2 km grid)."""
    from magpipe.datasets import britain_sample, demo_config

    sample = britain_sample()
    typer.echo(f"Demo on {sample.survey.name} ({sample.attribution})")
    cfg = demo_config().with_inputs(survey=sample.survey, labels=sample.labels, classes=sample.classes)
    if epochs:
        cfg.model.epochs = epochs
    if workers:
        cfg.runtime.workers = workers
    _run(out, cfg, serial=serial)

