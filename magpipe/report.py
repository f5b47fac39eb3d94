"""The evaluation report: report.json for machines, report.md and PNG maps for people."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magpipe.explore import markdown_table
from magpipe.io.schema import Layout
from magpipe.io.location import save_figure
from magpipe.io.stores import open_array, open_store, write_json, write_text
from magpipe.locking import assert_owned

MAX_FIGURE_PX = 1600  # maps larger than this are decimated for the figures only


# accuracy tables' column heads: short, so a table of every set fits a terminal and a 1280 px dashboard pane
METRIC_NAMES = (("pixel_accuracy", "pixel-wise"), ("patch_accuracy", "patch-wise"), ("balanced_accuracy", "balanced"))


COLUMNS = (("deployed", "deployed"), ("ae", "AE features"), ("random", "AE untrained"), ("stats", "window stats"),
           ("ae+stats", "AE + stats"), ("raw", "raw pixels"), ("deployed@prior", "deployed, prior weights"),
           ("deployed@balanced", "deployed, balanced weights"), ("deployed@unsmoothed", "deployed, unsmoothed"),
           ("majority", "majority class"))


# the rows a terminal shows: the map, the encoder and its controls, the floor (the variants are in report.md)
TERMINAL_SETS = ("deployed", "ae", "random", "stats", "ae+stats", "raw", "majority")


def _table(scores: dict, header: str, sets: tuple[str, ...] | None = None) -> str:
    """One row per feature set the scores hold (in :data:`COLUMNS` order), one column per metric, with
    '± std' where the scores carry one: four columns, whatever the number of sets, so the table fits a
    terminal and a dashboard pane."""
    def cell(key: str, name: str) -> str:
        """One metric of one feature set as a percentage, with its std when there is one."""
        std = scores.get(f"{key}_std", {}).get(name)
        return f"{scores[key][name]:.1%}" + ("" if std is None else f" ± {std:.1%}")

    rows = [(n, label) for n, label in COLUMNS if n in scores["pixel_accuracy"] and (sets is None or n in sets)]
    lines = [f"| {header} | " + " | ".join(label for _, label in METRIC_NAMES) + " |",
             "|---" * (len(METRIC_NAMES) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell(key, n) for key, _ in METRIC_NAMES) + " |" for n, label in rows]
    return "\n".join(lines)


def _all_sets(report: dict) -> dict:
    """The report's ``feature_sets`` in the layout of :func:`magpipe.evaluation.summarise` (or the headline
    keys alone, for a report without controls)."""
    sets = report.get("feature_sets")
    if not sets:
        return report
    out: dict = {}
    for key, _ in METRIC_NAMES:
        out[key] = {n: v[key]["mean"] for n, v in sets.items()}
        out[f"{key}_std"] = {n: v[key]["std"] for n, v in sets.items()}
    return out


def accuracy_table(report: dict, sets: tuple[str, ...] | None = None) -> str:
    """Markdown table of the headline metrics of every feature set (or of ``sets``) and the majority floor
    (mean ± std over splits)."""
    n = report.get("n_splits", 1)
    return _table(_all_sets(report), f"features (mean ± sd, {n} splits)" if n > 1 else "features", sets)


def paired_table(report: dict) -> str:
    """Markdown table of the paired differences (points), or '' for a report without them."""
    rows = report.get("paired")
    if not rows:
        return ""
    label = dict(COLUMNS)
    lines = ["| paired over the same splits | metric | difference (points) | ahead on |", "|---|---|---|---|"]
    lines += [f"| {label.get(d['a'], d['a'])} - {label.get(d['b'], d['b'])} | {d['metric'].replace('_', ' ')} | "
              f"{100 * d['mean_diff']:+.1f} ± {100 * d['sd']:.1f} | {d['wins']} of {d['n']} |" for d in rows]
    return "\n".join(lines)


def accuracy_tables(report: dict) -> str:
    """What a run prints: the comparison in words, the table of every feature set, the sparse-label table
    when it was run, and the paired differences."""
    parts = (report.get("headline", ""), accuracy_table(report), sparse_table(report), paired_table(report))
    return "\n\n".join(t for t in parts if t)


def terminal_summary(report: dict) -> str:
    """What a command prints when a run is scored, short enough for one screen: the comparison in words,
    the table of every feature set and the classes left unscored; the rest is in report.md."""
    unscored = unscored_sentence(report).strip()
    parts = (report.get("headline", ""), accuracy_table(report, TERMINAL_SETS), unscored,
             "Sparse-label scores, paired differences, per-class F1 and what the map uses: report.md")
    return "\n\n".join(t for t in parts if t)


def sparse_table(report: dict) -> str:
    """Markdown table of the sparse-label scores (mean ± std over draws); '' when not run."""
    sp = report.get("sparse")
    if not sp:
        return ""
    return _table(sp, f"{sp['per_class']} cells per class ({sp['repeats']} draws)")


def unscored_sentence(report: dict) -> str:
    """report.md's words on the classes some splits could not score ('' when every split scored all)."""
    unscored = report.get("unscored_classes") or {}
    if not unscored:
        return ""
    n = report.get("n_splits", 1)
    return (" **Not scored** (too few training cells, or none held out, on that split; a class with training cells "
            "is still mapped): " + ", ".join(f"{c} on {k} of {n} splits" for c, k in unscored.items()) + ".")


def selection_section(report: dict) -> list[str]:
    """report.md lines saying what the map deploys and the validation table it was chosen by ([] if none)."""
    dep = report.get("deployed")
    if not dep or not isinstance(dep.get("chosen_by"), dict):
        return []
    lines = ["## What the map uses", "",
             f"Features **{dep['features']}** (chosen by {dep['chosen_by']['features']}), encoder objective "
             f"{dep['objective']}, readout {dep.get('readout')}, patches of {dep['patch_px']} px, class "
             f"probabilities smoothed over a radius of {dep.get('smooth_px', 0)} cells (chosen by "
             f"{dep['chosen_by'].get('smooth_px', 'configuration')}). On each evaluation split the same procedure "
             f"chose: {', '.join(dep.get('per_split', []))}; radii "
             f"{', '.join(map(str, dep.get('per_split_smooth_px', [])))}.", ""]
    if dep.get("patch_size_validation"):
        lines += [f"Patch size {dep['patch_px']} px, chosen by {dep['chosen_by']['patch_px']}:", "",
                  "| patch size | " + " | ".join(next(iter(dep["patch_size_validation"].values()))) + " |",
                  "|---" * (1 + len(next(iter(dep["patch_size_validation"].values())))) + "|"]
        lines += [f"| {p} px | " + " | ".join(f"{v:.1%}" for v in row.values()) + " |"
                  for p, row in dep["patch_size_validation"].items()]
        lines.append("")
    if dep.get("validation"):
        lines += ["| candidate | validation (balanced) | C | gamma |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {v.get('cv_balanced_accuracy', float('nan')):.1%} | {v.get('C')} | "
                  f"{v.get('gamma', float('nan')):.3g} |" for n, v in dep["validation"].items()]
        lines.append("")
    lines += kernel_lines(dep)
    if dep.get("smoothing_validation"):
        lines += ["| smoothing radius (cells) | validation (balanced) |",
                  "|---|---|"]
        lines += [f"| {r} | {v['cv_balanced_accuracy']:.1%} ± {v['cv_se']:.1%} |"
                  for r, v in dep["smoothing_validation"].items()]
        lines.append("")
    return lines


def kernel_lines(dep: dict) -> list[str]:
    """report.md lines on the deployed SVM's kernel: how it was chosen, the validation table of the choice,
    and both kernels on the test cells of the splits that made it."""
    kernel = dep.get("svm_kernel", "exact")
    lines = [f"SVM kernel **{kernel}** (chosen by {dep['chosen_by'].get('svm_kernel', 'configuration')}); on each "
             f"split: {', '.join(dep.get('per_split_kernel', []))}.", ""]
    if dep.get("kernel_validation"):
        lines += ["| kernel | validation (balanced) | C | gamma | cost per cell |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['cv_balanced_accuracy']:.1%} ± {v['cv_se']:.1%} | {v['C']} | {v['gamma']:.3g} | "
                  + (f"{v['n_support']} support vectors" if v.get("n_support") else f"{v.get('n_components')} landmarks") + " |"
                  for k, v in dep["kernel_validation"].items()]
        lines.append("")
    test = dep.get("kernel_test") or {}
    if test:
        d = test["lowrank_minus_exact"]
        lines += [f"On the test cells of the {test['n']} splits that chose between them (deployed set, unsmoothed): "
                  f"exact {test['exact']:.1%}, low-rank {test['lowrank']:.1%} balanced accuracy (low-rank - exact "
                  f"{100 * d['mean']:+.1f} ± {100 * d['sd']:.1f} points, ahead on {d['lowrank_ahead']} of "
                  f"{test['n']}).", ""]
    return lines


def layer_group_section(report: dict) -> list[str]:
    """What each group of layers adds: the deployed set (unsmoothed) without the group, paired against the
    whole stack; nothing for a one-group survey."""
    table = report.get("layer_groups") or {}
    if not table:
        return []
    lines = ["| layer group | inputs | balanced without it | whole stack - without (points) | splits the whole "
             "stack was ahead |", "|---|---|---|---|---|"]
    for group, row in sorted(table.items(), key=lambda kv: -kv[1]["full_minus_without"]["mean_diff"]):
        w, d = row["balanced_accuracy_without"], row["full_minus_without"]
        lines.append(f"| {group} | {', '.join(row['inputs'])} | {w['mean']:.1%} ± {w['std']:.1%} | "
                     f"{100 * d['mean_diff']:+.1f} ± {100 * d['sd']:.1f} | {d['wins']} of {d['n']} |")
    return ["## What each layer group adds", "",
            "The deployed feature set, unsmoothed, scored on the same splits with one group's layers held at their "
            "mean (the encoder is not retrained; the SVM keeps its C and gamma): the larger the drop, the more "
            "the map leans on that group.", "", *lines, ""]


def per_class_section(report: dict) -> list[str]:
    """report.md lines on the map's classes: the deployed set's test cells, precision, recall and F1 per class
    (its controls' F1 beside them), then its confusion matrix; the first split's, as report.json's
    ``per_class`` and ``confusion.deployed``."""
    classes, per = report["classes"], report.get("per_class")
    if not per:  # a report from before per_class: F1 alone
        dep = report["f1"].get("deployed", report["f1"]["ae"])
        per = {c: {"test_cells": None, "precision": None, "recall": None, "f1": dep[c]} for c in classes}

    def num(v, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    lines = ["## Per-class scores of the map", "",
             "The deployed set on the first split's test cells (the split the map's SVM was fitted on); the F1 of "
             "two controls beside it.", "",
             "| class | test cells | precision | recall | F1 | F1 (AE) | F1 (raw) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {c} | {num(per[c]['test_cells'], 'd')} | {num(per[c]['precision'], '.2f')} | "
              f"{num(per[c]['recall'], '.2f')} | {per[c]['f1']:.2f} | {report['f1']['ae'][c]:.2f} | "
              f"{report['f1']['raw'][c]:.2f} |" for c in classes]
    cm = report["confusion"].get("deployed")
    if cm is not None:
        # columns numbered as the rows, so eight units fit a 1280 px dashboard pane as well as four
        lines += ["", "Its confusion matrix (test cells; rows: the mapped unit, columns: the map's class, numbered as "
                  "the rows):", "", "| mapped unit | " + " | ".join(str(k) for k in range(1, len(classes) + 1)) + " |",
                  "|---" * (len(classes) + 1) + "|"]
        lines += [f"| {k} {c} | " + " | ".join(str(v) for v in row) + " |"
                  for k, (c, row) in enumerate(zip(classes, cm), start=1)]
    return [*lines, ""]


def calibration_section(report: dict) -> list[str]:
    """report.md lines on what a confidence means: each set's expected calibration error and the map's
    reliability table (first split's test cells), and a word where the SVM's C sits at the grid's edge."""
    cal = report.get("calibration") or {}
    sets = cal.get("sets") or {}
    if not sets:
        return []
    label = dict(COLUMNS)
    lines = ["## Calibration", "",
             "A confidence is the probability that the map's class is right at that cell, for the mix of units "
             "of the labelled area (calibrated on spatially held-out training cells). How often the map is right "
             "at each confidence, on the first split's test cells (every set's SVM calibrated as the map's is; "
             "the map's own confidences before any smoothing). The expected calibration error (ECE) is the mean "
             "gap between confidence and accuracy: 0 when a confidence of 0.6 is right 60 % of the time.", "",
             "| features | ECE (points) | cells |", "|---|---|---|"]
    lines += [f"| {label.get(n, n)} | {100 * c['ece']:.1f} | {c['n']} |" for n, c in sets.items()]
    dep = sets.get("deployed")
    if dep:
        lines += ["", "The map's reliability:", "", "| confidence | cells | mean confidence | right |",
                  "|---|---|---|---|"]
        lines += [f"| {b['lo']:.1f} to {b['hi']:.1f} | {b['n']} | {b['confidence']:.2f} | {b['accuracy']:.0%} |"
                  for b in dep["bins"]]
    edge = cal.get("c_at_grid_edge")
    if edge:
        lines += ["", f"The map's SVM took C = {cal['deployed_C']:g}, the {'smallest' if edge == 'low' else 'largest'} "
                  f"value searched (`svm.C`: {', '.join(f'{c:g}' for c in cal['C_grid'])}): the best C may lie beyond "
                  "the grid; widen it to find out."]
    return [*lines, ""]


def markdown(report: dict) -> str:
    """report.md's text from a report (see :func:`magpipe.stages.evaluate.build_report`)."""
    sp = report["split"]
    tr = report.get("training", {})
    return "\n".join([
        "# magpipe report",
        "",
        f"Spatial holdout: {report['n_train']} training cells, {report['n_test']} test cells "
        f"({report['n_test_patches']} test patches of {report['patch_px']} px); blocks of {sp['block_px']} px, "
        f"a gap of {sp['gap_px']} px between training and test cells. Accuracy is the mean ± standard "
        f"deviation over {report.get('n_splits', 1)} random spatial split(s) (seeds from {sp['seed']}); per-class "
        "F1 and the confusion matrices are the first split's, the one the deployed model was trained on."
        + "".join(f" Split seed {sk['seed']} was skipped: {sk['reason']}" for sk in report.get("splits_skipped", []))
        + unscored_sentence(report),
        "",
        *([report["headline"], ""] if report.get("headline") else []),
        accuracy_table(report),
        "",
        "Controls: *AE untrained* is the same encoder with the weights training started from (what training "
        "added); *window stats* are the centre value and the mean, std, max, min and mean gradient magnitude "
        "over nested windows of each input (the classical baseline); *raw pixels* is the paper's baseline; "
        "*deployed* is what the map uses (chosen on validation, below), and *deployed, prior/balanced weights* "
        "the same features under the other `svm.class_weight` (prior favours pixel accuracy, balanced the "
        "rare units); *deployed, unsmoothed* is the deployed set without the map's probability smoothing.",
        "",
        *([paired_table(report), ""] if report.get("paired") else []),
        *selection_section(report),
        *layer_group_section(report),
        *(["## Sparse labels", "",
           "The same test cells; each SVM trained on a random few labelled cells per class, as in the paper.",
           "", sparse_table(report), ""] if report.get("sparse") else []),
        *per_class_section(report),
        *calibration_section(report),
        "## Model",
        "",
        f"- encoder layers used: {report['layers']}",
        f"- autoencoder: best epoch {tr.get('best_epoch')}, validation loss {tr.get('best_val_loss', float('nan')):.4f}, "
        f"trained on {tr.get('device')} in {tr.get('seconds', float('nan')):.0f} s",
        *deployed_svm_line(report),
        f"- SVM (AE): C={report['svm']['ae'].get('C')}, gamma={report['svm']['ae'].get('gamma', float('nan')):.3g}, "
        f"{report['svm']['ae'].get('n_support')} support vectors",
        f"- SVM (raw): C={report['svm']['raw'].get('C')}, gamma={report['svm']['raw'].get('gamma', float('nan')):.3g}, "
        f"{report['svm']['raw'].get('n_support')} support vectors",
        "",
        "![class map](class_map.png) ![confidence](confidence.png) ![anomaly](anomaly.png) "
        "![confusion](confusion.png)",
        "",
        "## Strongest anomalies",
        "",
        "Highest autoencoder reconstruction error (the survey looks unlike what the model learned), "
        "each at least two patch widths from a stronger one; circled on anomaly.png.",
        "",
        markdown_table(report.get("anomalies", []), ["rank", "x", "y", "anomaly"]),
        "",
        "## Label next",
        "",
        "Blocks where the SVM is least certain (lowest mean confidence that its class is right): new labels here "
        "help most. Boxed on confidence.png.",
        "",
        markdown_table(report.get("label_next", []), ["rank", "x", "y", "mean_confidence"]),
        "",
        f"## Embedding view\n\n{report.get('embedding', {}).get('method', 'PCA')} of the AE features of "
        f"{report.get('embedding', {}).get('n_cells', 0)} held-out cells, coloured by their true class.",
        "",
        "![embedding](embedding.png)",
        "",
    ])


def write_report(report: dict, layout: Layout, *, embedding: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """report.json, report.md and the figures of a run (the JSON last: it marks the report done).

    ``embedding`` is ((n, 2) coordinates, (n,) true class codes 1..K) of held-out cells, from
    :func:`magpipe.explore.embedding_2d`; without it no embedding.png is drawn.
    """
    write_figures(report, layout, embedding=embedding)
    write_text(markdown(report), layout.report_md)
    assert_owned(layout.report)  # report.json marks the report whole: only while the output is this run's
    write_json(report, layout.report)


def _decimated(arr) -> np.ndarray:
    step = max(1, int(np.ceil(max(arr.shape) / MAX_FIGURE_PX)))
    return np.asarray(arr[::step, ::step])


def _figure(**kw):
    """A matplotlib figure drawn with the Agg canvas: no pyplot, no process-wide backend choice."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def class_colormap(K: int):
    """The colours of classes 1..K in every figure and export: matplotlib's tab10, tab20 past 10 classes."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["tab10" if K <= 10 else "tab20"].colors[:K])


def write_figures(report: dict, layout: Layout, *, embedding: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """class_map.png, confidence.png, anomaly.png, confusion.png (north up), embedding.png.

    Maps are read from ``OUT/classified.zarr`` and decimated to at most ``MAX_FIGURE_PX`` cells a side.
    """
    class_map_figure(report, layout)
    for name in ("confidence", "anomaly"):
        layer_figure(report, layout, name)
    confusion_figure(report, layout)
    if embedding is not None:
        embedding_figure(report, layout, *embedding)


def class_map_figure(report: dict, layout: Layout) -> None:
    """class_map.png: the class of every cell (no data blank), one colour per class, north up."""
    from matplotlib.colors import BoundaryNorm

    classes = report["classes"]
    K = len(classes)
    cls = _decimated(open_array(layout.classified, "class")).astype(float)
    cls[cls == 0] = np.nan
    fig = _figure(figsize=(7, 7))
    ax = fig.subplots()
    grid = MapGrid.of(layout.classified)
    im = ax.imshow(cls, cmap=class_colormap(K), norm=BoundaryNorm(np.arange(0.5, K + 1), K), interpolation="nearest",
                   extent=grid.extent)
    cb = fig.colorbar(im, ax=ax, ticks=range(1, K + 1), shrink=0.7)
    cb.ax.set_yticklabels(classes, fontsize=7)
    dep = report.get("feature_sets", {}).get("deployed")
    name, acc = (report["deployed"]["features"], dep["pixel_accuracy"]["mean"]) if dep else \
        ("ae", report["pixel_accuracy"]["ae"])
    ax.set_title(f"class map ({name} features + SVM); holdout pixel acc {acc:.0%}")
    grid.decorate(ax)
    save_figure(fig, layout.figure("class_map"), dpi=110, bbox_inches="tight")


class MapGrid:
    """Where a map's cells lie in the survey's CRS, for figures a geologist can go to: the image's extent,
    axes labelled with the CRS's name and units, and a scale bar.

    ``extent`` (left, right, bottom, top) in CRS units; ``crs_name`` and ``unit`` (None when the store has
    no CRS: the axes are then the grid's own coordinates); ``cell`` the cell side in CRS units.
    """

    def __init__(self, extent: tuple[float, float, float, float], cell: float, crs_name: str | None,
                 unit: str | None):
        self.extent, self.cell, self.crs_name, self.unit = extent, cell, crs_name, unit

    @classmethod
    def of(cls, store) -> MapGrid:
        import rioxarray  # noqa: F401  (the .rio accessor)

        ds = open_store(store)
        x, y = ds["x"].values, ds["y"].values
        dx = float(abs(x[1] - x[0])) if x.size > 1 else 1.0
        dy = float(abs(y[1] - y[0])) if y.size > 1 else dx
        extent = (float(x.min()) - dx / 2, float(x.max()) + dx / 2, float(y.min()) - dy / 2, float(y.max()) + dy / 2)
        crs = ds.rio.crs
        name = unit = None
        if crs is not None:
            from pyproj import CRS

            c = CRS.from_user_input(crs.to_wkt())
            name, unit = c.name, (c.axis_info[0].unit_name if c.axis_info else None)
        return cls(extent, dx, name, unit)

    def decorate(self, ax) -> None:
        """Axis labels in the CRS (its name below), tick labels in its units, and a scale bar of a round length
        about a fifth of the map's width (projected CRSs)."""
        unit = {"metre": "m", "meter": "m"}.get(self.unit or "", self.unit or "grid units")
        ax.set_xlabel(f"easting ({unit})" + (f"\n{self.crs_name}" if self.crs_name else ""), fontsize=7)
        ax.set_ylabel(f"northing ({unit})", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.ticklabel_format(style="plain", useOffset=False)
        if unit != "m":
            return
        from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

        width = self.extent[1] - self.extent[0]
        length = scale_length(width / 5)
        label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
        ax.add_artist(AnchoredSizeBar(ax.transData, length, label, "lower left", pad=0.4, frameon=True,
                                      size_vertical=width / 200, fontproperties={"size": 7}))


def scale_length(target: float) -> float:
    """The round length (1, 2 or 5 times a power of ten) at most ``target``, for a scale bar."""
    power = 10 ** np.floor(np.log10(target))
    return float(max(m * power for m in (1, 2, 5) if m * power <= target))


def layer_figure(report: dict, layout: Layout, name: str) -> None:
    """confidence.png with the label-next boxes, or anomaly.png with the strongest anomalies circled.

    ``name`` is ``"confidence"`` (0..1) or ``"anomaly"`` (squared standardised units, colours capped
    at the 99th percentile so a few extreme cells do not wash out the rest).
    """
    from matplotlib.patches import Rectangle

    data = _decimated(open_array(layout.classified, name))
    grid = MapGrid.of(layout.classified)
    fig = _figure(figsize=(7, 7))
    ax = fig.subplots()
    if name == "anomaly":
        vmax = np.nanpercentile(data, 99) if np.isfinite(data).any() else 1
        im = ax.imshow(data, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest", extent=grid.extent)
        for a in report.get("anomalies", []):  # numbered as report.md's table of them
            ax.plot(a["x"], a["y"], "o", mfc="none", mec="cyan", ms=12, mew=1.5)
            ax.annotate(str(a["rank"]), (a["x"], a["y"]), color="cyan", fontsize=7, xytext=(6, 6),
                        textcoords="offset points")
        ax.set_title("anomaly (reconstruction error); circles: strongest, numbered as in report.md")
        label = "mean squared reconstruction error (standardised units; capped at the 99th percentile)"
    else:
        finite = data[np.isfinite(data)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        im = ax.imshow(data, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest", extent=grid.extent)
        for b in report.get("label_next", []):  # numbered as report.md's table of them
            half = b["block_px"] * grid.cell / 2
            ax.add_patch(Rectangle((b["x"] - half, b["y"] - half), 2 * half, 2 * half, fill=False, ec="red", lw=1.2))
            ax.annotate(str(b["rank"]), (b["x"] + half, b["y"] + half), color="red", fontsize=7)
        ax.set_title("confidence; boxes: where to label next, numbered as in report.md")
        label = "calibrated probability that the mapped class is right"
    fig.colorbar(im, ax=ax, shrink=0.7).set_label(label, fontsize=7)
    grid.decorate(ax)
    save_figure(fig, layout.figure(name), dpi=110, bbox_inches="tight")


def deployed_svm_line(report: dict) -> list[str]:
    """report.md's line on the map's own SVM (its set, kernel, C, gamma), where the report records it."""
    dep = report.get("deployed") or {}
    info = report.get("svm", {}).get(dep.get("features"))
    if not info:
        return []
    kernel = dep.get("svm_kernel", info.get("kernel"))
    return [f"- SVM of the map ({dep['features']}): kernel {kernel}, C={info.get('C')}, "
            f"gamma={info.get('gamma', float('nan')):.3g} (the exact search's; the first split's)"]


CONFUSION_PANELS = (("deployed", "the map"), ("ae", "AE features"), ("raw", "raw pixels"))


def confusion_figure(report: dict, layout: Layout) -> None:
    """confusion.png: the map's (deployed set's) confusion matrix, then AE's and raw's, coloured by row share,
    labelled by count."""
    classes = report["classes"]
    K = len(classes)
    panels = [(k, t) for k, t in CONFUSION_PANELS if k in report["confusion"]]
    fig = _figure(figsize=(5.5 * len(panels), 5))
    for ax, (kind, title) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        cm = np.asarray(report["confusion"][kind], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(K):
            for j in range(K):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(K), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(K), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: pixel acc {np.trace(cm) / max(cm.sum(), 1):.0%} (first split)")
    fig.tight_layout()
    save_figure(fig, layout.figure("confusion"), dpi=110)


def embedding_figure(report: dict, layout: Layout, xy: np.ndarray, labels: np.ndarray) -> None:
    """embedding.png: ``xy`` (n, 2) embedding coordinates coloured by ``labels`` (n,), class codes 1..K."""
    classes = report["classes"]
    colours = class_colormap(len(classes)).colors
    fig = _figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    for k, name in enumerate(classes, start=1):
        sel = labels == k
        ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.6, color=colours[k - 1], label=name)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    method = report.get("embedding", {}).get("method", "PCA")
    ax.set_title(f"AE embeddings of held-out cells ({method}), coloured by true class")
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    save_figure(fig, layout.figure("embedding"), dpi=110, bbox_inches="tight")


def similarity_figure(store: str | Path, hits: list[dict], query: tuple[np.ndarray, np.ndarray], path: Path) -> Path:
    """The similarity map with the query (white) and the most similar places (numbered circles).

    Parameters
    ----------
    store : a complete ``similar.zarr``; its ``similarity`` (cosine, -1..1) is drawn north up.
    hits : the places of :func:`magpipe.explore.top_blocks` (``rank``, ``row``, ``col``).
    query : (rows, cols) cell indices of the query.
    path : the PNG to write; returned.
    """
    arr = open_array(store, "similarity")
    step = max(1, int(np.ceil(max(arr.shape) / MAX_FIGURE_PX)))
    fig = _figure(figsize=(7, 7))
    ax = fig.subplots()
    im = ax.imshow(_decimated(arr), cmap="RdYlBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine similarity")
    ax.plot(query[1] / step, query[0] / step, "s", color="white", ms=3, mec="black", mew=0.3)
    for h in hits:
        ax.plot(h["col"] / step, h["row"] / step, "o", mfc="none", mec="black", ms=12, mew=1.5)
        ax.annotate(str(h["rank"]), (h["col"] / step, h["row"] / step), fontsize=7, xytext=(6, 6),
                    textcoords="offset points")
    ax.set_title("where else looks like the query (white)")
    ax.set_axis_off()
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    return path
