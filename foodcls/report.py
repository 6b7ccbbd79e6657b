"""Rich tables of the commands' reports (cli.py prints them; nothing here computes a figure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from foodcls.labels import CLASSES


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def metrics_tables(report: dict[str, Any]) -> list[Table]:
    low, high = report["accuracy_ci"]
    per_class = Table(title=f"accuracy {report['accuracy']:.4f} (95 % CI {low:.3f}-{high:.3f}) on {report['n']} rows "
                            f"(macro-F1 {report['macro_f1']:.4f}, balanced accuracy {report['balanced_accuracy']:.4f})")
    for column in ("class", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, m in report["per_class"].items():
        per_class.add_row(name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"]))
    confusion = Table(title="confusion matrix (rows: true class, columns: predicted)")
    confusion.add_column("true \\ predicted")
    for name in report["classes"]:
        confusion.add_column(name, justify="right")
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        confusion.add_row(name, *(str(v) for v in row))
    tables = [per_class, confusion]
    if "ece" in report:
        tables.append(_trust_table(report))
    if report.get("open_set"):
        tables.append(open_set_table(report["open_set"]))
    if report.get("suggestions"):
        tables.append(suggestions_table(report["suggestions"], report.get("calibration")))
    if report.get("precision_recall"):
        tables.append(precision_recall_table(report["precision_recall"]))
    return tables


def suggestions_table(figures: dict[str, Any], calibration: dict[str, Any] | None) -> Table:
    point = (calibration or {}).get("operating_point") or {}
    where = f"{calibration['method']}, {calibration['rows']} rows" if calibration and calibration.get("rows") else "?"
    table = Table(title=f"suggestions at the checkpoint's operating point (precision {fmt(point.get('precision'), 2)} on its "
                        f"calibration rows: {where}): {figures['suggested']} made, precision {fmt(figures['precision'], 3)}, "
                        f"share of the products of the classes suggested correctly {fmt(figures['recall'], 3)}")
    for column in ("class", "threshold", "suggested", "precision", "recall", "products"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, m in figures["per_class"].items():
        table.add_row(name, fmt(point.get("thresholds", {}).get(name), 3), str(m["suggested"]), fmt(m["precision"], 3),
                      fmt(m["recall"], 3), str(m["support"]))
    return table


def precision_recall_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="suggestions at other precisions (`predict --precision P`: thresholds fitted on the calibration rows)")
    for column in ("asked precision", "precision here", "recall here", "suggested"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['target']:.2f}", fmt(row["precision"], 3), fmt(row["recall"], 3), str(row["suggested"]))
    return table


def _trust_table(report: dict[str, Any]) -> Table:
    """Calibration figures, the risk–coverage table and the conformal sets' coverage."""
    sets = report.get("conformal")
    set_text = (f"; 90 % sets hold the true class {sets['empirical_coverage']:.3f} of the time, mean size {sets['mean_size']:.2f}"
                if sets else "")
    table = Table(title=f"calibration: temperature {report['temperature']:.3f}, ECE {report['ece']:.4f}, NLL {report['nll']:.4f}, "
                        f"Brier {report['brier']:.4f}{set_text}; keeping products whose top probability ≥ threshold:")
    for column in ("threshold", "coverage", "accuracy of the kept"):
        table.add_column(column, justify="right")
    for row in report["risk_coverage"]:
        table.add_row(f"{row['threshold']:.2f}", f"{row['coverage']:.3f}", fmt(row["accuracy"], 3))
    return table


def open_set_table(figures: dict[str, Any]) -> Table:
    table = Table(title=f"products in none of the classes ({figures['n']} from {figures.get('data', 'the file')}): "
                        f"AUROC {fmt(figures['auroc'], 3)}; ≥ 0.9 for one class: {fmt(figures['share_confident_over_0_9'], 3)}")
    table.add_column("in-class kept", justify="right")
    table.add_column("out-of-class rejected", justify="right")
    table.add_column("accuracy of the kept", justify="right")
    for coverage, rejected in figures["rejected_at_coverage"].items():
        table.add_row(coverage, fmt(rejected, 3), fmt(figures.get("accuracy_of_kept", {}).get(coverage), 3))
    return table


def baselines_table(report: dict[str, Any]) -> Table:
    table = Table(title="baselines (same training data, same evaluation data)")
    for column in ("model", "accuracy", "macro-F1"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row("foodcls MLP", f"{report['accuracy']:.4f}", f"{report['macro_f1']:.4f}", style="bold")
    for name, details in report["baseline_details"].items():
        table.add_row(name, f"{details['accuracy']:.4f}", f"{details['macro_f1']:.4f}")
    return table


def explanation_table(predictor: Any, values: list[float], explanation: Any, best: str) -> Table:
    table = Table(title=f"why {best}: p = {explanation.probability:.3f}, {explanation.baseline_probability:.3f} at the "
                        "training medians; contributions add up to the difference")
    for column in ("feature", "value", "median", "contribution", ""):
        table.add_column(column, justify="left" if column in ("feature", "") else "right")
    peak = max(abs(explanation.contributions).max(), 1e-12)
    rows = [(name, "-" if value != value else f"{value:g}", f"{median:g}", share)
            for name, value, median, share in zip(predictor.features, values, predictor.prep.fill, explanation.contributions)]
    if explanation.name is not None:
        rows.append(("name", ", ".join(f"{text} {share:+.3f}" for text, share in explanation.ngrams) or "(none)", "(no name)",
                     explanation.name))
    peak = max(peak, *(abs(r[3]) for r in rows))
    for name, value, median, share in rows:
        bar = ("[green]" + "█" * round(20 * share / peak) + "[/green]") if share > 0 else ("[red]" + "█" * round(-20 * share / peak) + "[/red]")
        table.add_row(name, value, median, f"{share:+.4f}", bar)
    return table


def build_tables(card: dict[str, Any], out: Path) -> list[Table]:
    sources_table = Table(title=f"{card['rows_read']:,} rows read, {card['rows_kept']:,} kept → {out}")
    for column in ("source", "format", "rows", "sha256"):
        sources_table.add_column(column)
    for source in card["sources"]:
        sources_table.add_row(Path(source["path"]).name, source["format"], f"{source['rows']:,}", source["sha256"][:12] + "…")
    kept = Table(title="kept per class and split")
    for column in ("class", "train", "val", "test", "total"):
        kept.add_column(column, justify="left" if column == "class" else "right")
    for name, total in card["per_class"].items():
        kept.add_row(name, *(str(card["per_split"][s][name]) for s in ("train", "val", "test")), str(total))
    dropped = Table(title="dropped per reason")
    dropped.add_column("reason")
    dropped.add_column("rows", justify="right")
    for reason, count in card["dropped"].items():
        dropped.add_row(reason, f"{count:,}")
    return [sources_table, kept, dropped]


# runs list's columns, most wanted first: a narrow terminal keeps the first ones whole rather than
# squeezing all of them (`--wide` shows every one).
RUN_COLUMNS = ("run", "status", "epochs", "val acc", "test acc", "started (UTC)", "config")
# Left out first when a terminal is narrow: what identifies a run and how good it is stays.
RUN_COLUMNS_DROPPED = ("config", "started (UTC)", "epochs")


def runs_table(overviews: list[dict[str, Any]], runs_root: Path, width: int | None = None) -> Table:
    """width: the terminal's columns (None: every column)."""
    cells = []
    for o in overviews:
        status = {"finished": "green", "interrupted": "yellow", "failed": "red", "pruned": "cyan"}.get(o["status"], "white")
        # val acc: the chosen checkpoint's, as test acc is (the best epoch's figure where the run has no summary yet)
        val = o["val_accuracy"] if o["val_accuracy"] is not None else o["best_val_accuracy"]
        cells.append({"run": str(Path(o["run_dir"]).relative_to(runs_root)), "status": f"[{status}]{o['status']}[/]",
                      "epochs": str(o["epochs"]), "val acc": fmt(val), "test acc": fmt(o["test_accuracy"]),
                      "started (UTC)": o["started_at"].replace("T", " ")[:16], "config": o["config"]})
    columns = list(RUN_COLUMNS)
    if width is not None:
        def needed(column: str) -> int:  # widest cell or header, plus the border and padding rich draws
            return max([len(column), *(Text.from_markup(c[column]).cell_len for c in cells)]) + 3
        for dropped in RUN_COLUMNS_DROPPED:
            if sum(needed(c) for c in columns) + 1 <= width:
                break
            columns.remove(dropped)
    table = Table(title=f"{len(overviews)} runs under {runs_root}/")
    for column in columns:
        # Still too wide: the run's path folds onto a second line rather than lose its end (its timestamp).
        table.add_column(column, justify="right" if "acc" in column or column == "epochs" else "left",
                         no_wrap=column != "run", overflow="fold")
    for row in cells:
        table.add_row(*(row[c] for c in columns))
    return table


def compare_table(comparison: dict[str, Any]) -> Table:
    table = Table(title="runs compared")
    table.add_column("")
    for overview in comparison["runs"]:
        table.add_column(overview["run"], justify="right")
    for key, values in comparison["config_diff"].items():
        table.add_row(f"[cyan]{key}[/]", *(fmt(v) for v in values))
    if comparison["config_diff"]:
        table.add_section()
    for name, values in comparison["metrics"].items():
        table.add_row(name, *(fmt(v) for v in values))
    return table


def sweep_table(report: dict[str, Any]) -> Table:
    best = report["best"]
    table = Table(title=f"sweep {report['sweep_dir']} ({report['seeds']} seed(s) per combination)"
                  + (f"; best by mean {best['criterion']}" if best else ""))
    keys = list(report["results"][0]["params"]) if report["results"] else []
    for key in keys:
        table.add_column(key)
    for column in ("runs", "val accuracy", "test accuracy", ""):
        table.add_column(column, justify="right")
    for entry in report["results"]:
        ok = sum(1 for r in entry["runs"] if r["status"] != "failed")
        cells = [
            "-" if entry["mean"][m] is None else f"{entry['mean'][m]:.4f} ± {entry['std'][m]:.4f}"
            for m in ("val_accuracy", "test_accuracy")
        ]
        is_best = best is not None and entry["params"] == best["params"]
        table.add_row(*(json.dumps(entry["params"][k]) for k in keys), f"{ok}/{len(entry['runs'])}", *cells,
                      "best" if is_best else "", style="bold green" if is_best else None)
    return table


def cv_table(report: dict[str, Any]) -> Table:
    kind = f"leave one {report['group_by']} out" if report["group_by"] else f"{len(report['folds'])} stratified folds"
    table = Table(title=f"cv {report['cv_dir']} ({kind}); recall per class")
    classes = report.get("classes") or CLASSES
    for column in ("fold", "held out", "rows", "acc", "bal acc", *(c[:5] for c in classes)):
        # The held-out source folds onto more lines rather than become `off-…` for every fold.
        table.add_column(column, justify="left" if column in ("fold", "held out") else "right", overflow="fold",
                         min_width=12 if column == "held out" else None)
    for fold in report["folds"]:
        group = fold["group"] or ""
        if fold["status"] == "failed":
            table.add_row(str(fold["fold"]), group, str(fold["n_eval"]), "[red]failed[/red]")
            continue
        recall = fold["per_class_recall"]
        table.add_row(str(fold["fold"]), group, str(fold["n_eval"]), f"{fold['accuracy']:.3f}", f"{fold['balanced_accuracy']:.3f}",
                      *(fmt(recall.get(c), 2) for c in classes))
    mean, std, pooled = report["mean"], report["std"], report["pooled"]
    if pooled is not None:
        table.add_section()
        table.add_row("mean ± std", "", "", f"{mean['accuracy']:.3f} ± {std['accuracy']:.3f}",
                      f"{mean['balanced_accuracy']:.3f} ± {std['balanced_accuracy']:.3f}")
        table.add_row("pooled", "", str(pooled["n"]), f"{pooled['accuracy']:.3f}", f"{pooled['balanced_accuracy']:.3f}",
                      *(fmt(pooled["per_class_recall"].get(c), 2) for c in classes), style="bold")
    return table


def cv_baselines_table(report: dict[str, Any]) -> Table:
    table = Table(title="baselines on the same folds: pooled (mean ± std over folds)")
    for column in ("model", "accuracy", "balanced acc", "worst recall"):
        table.add_column(column, justify="left" if column == "model" else "right")
    rows = [("foodcls MLP", {"mean": report["mean"], "std": report["std"], "pooled": report["pooled"]})] + list(report["baselines"].items())
    for name, b in rows:
        table.add_row(name, *(f"{b['pooled'][m]:.3f} ({b['mean'][m]:.2f}±{b['std'][m]:.2f})"
                              for m in ("accuracy", "balanced_accuracy", "worst_class_recall")),
                      style="bold" if name == "foodcls MLP" else None)
    return table


def tune_table(report: dict[str, Any]) -> Table:
    trials = report["trials"]
    maximize = report["direction"] == "maximize"
    done = sorted((t for t in trials if t["value"] is not None), key=lambda t: -t["value"] if maximize else t["value"])
    states = {s: sum(1 for t in trials if t["state"] == s) for s in ("complete", "pruned", "fail", "running")}
    best_number = report["best"]["number"] if report["best"] is not None else None
    shown = [t for t in done if t["state"] == "complete"][:10]
    table = Table(title=f"study {report['study']}: " + ", ".join(f"{n} {s}" for s, n in states.items() if n)
                  + (f"; best: trial {best_number}" if best_number is not None else "")
                  + f"; the {len(shown)} best complete trials below (a pruned trial's value is its last report, not a score)")
    keys = list(dict.fromkeys(k for t in trials for k in t["params"]))
    for column in ("trial", "state", "value", *keys):
        # Keys and values fold onto more lines rather than be cut (`train.bat…`).
        table.add_column(column, justify="right" if column in ("trial", "value") else "left", overflow="fold")
    for t in shown:
        table.add_row(str(t["number"]), t["state"], f"{t['value']:.4f}", *(json.dumps(t["params"].get(k)) for k in keys),
                      style="bold green" if t["number"] == best_number else None)
    if report["best"] is not None:
        table.caption = f"best config: {report['best']['config']}  (storage {report['storage']})"
    return table
