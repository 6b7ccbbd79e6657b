"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from foodcls import runs  # noqa: E402
from foodcls.fileio import atomic_write  # noqa: E402

LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
GRAD_NORMS = "grad_norms.png"
RELIABILITY = "reliability.png"


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_learning_curves(run_dirs: list[Path], out: Path) -> None:
    """Loss and accuracy per epoch: train against val and test, one colour per run when several."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, run_dir in enumerate(run_dirs):
        records = runs.read_metrics(run_dir)
        epochs = [r["epoch"] for r in records]
        label = "" if len(run_dirs) == 1 else f"{run_dir.name} "
        color = f"C{i}" if len(run_dirs) > 1 else None
        for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
            if records and f"{split}_loss" in records[0]:
                kwargs = {"color": color, "linestyle": style, "label": f"{label}{split}"}
                ax_loss.plot(epochs, [r[f"{split}_loss"] for r in records], **kwargs)
                ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in records], **kwargs)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out)


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], out: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    peak = max(max(row) for row in matrix) or 1
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            ax.text(c, r, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    _save(fig, out)


def plot_reliability(bins: list[dict], out: Path, title: str) -> None:
    """Accuracy against confidence per bin of the top probability (the diagonal is perfect calibration),
    with how many products each bin holds."""
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=0.09, alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="tab:red", label="accuracy at the mean confidence")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centres, [b["n"] for b in bins], width=0.09, color="tab:grey")
    ax_n.set(xlabel="top probability", ylabel="products")
    _save(fig, out)


def plot_grad_norms(run_dirs: list[Path], out: Path) -> None:
    """Per-layer gradient norm (log scale) per epoch: the vanishing gradient made visible."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, run_dir in enumerate(run_dirs):
        records = [r for r in runs.read_metrics(run_dir) if "grad_norms" in r]
        if not records:
            continue
        n_layers = len(records[0]["grad_norms"])
        epochs = [r["epoch"] for r in records]
        for layer in range(n_layers):
            label = f"{run_dir.name + ' ' if len(run_dirs) > 1 else ''}layer {layer + 1}"
            ax.plot(epochs, [r["grad_norms"][layer] for r in records], color=f"C{layer if len(run_dirs) == 1 else i}",
                    alpha=0.4 + 0.6 * (layer + 1) / n_layers, label=label)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="mean gradient norm of the layer's weights", title="Gradient norm per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, out)


def write_run_plots(run_dir: Path, summary: dict | None = None) -> list[Path]:
    """(Re)draw a run's learning curves, gradient norms and test confusion matrix into its directory
    (from its summary.json, or the summary about to be written)."""
    written = [run_dir / LEARNING_CURVES, run_dir / GRAD_NORMS]
    curves = runs.member_dirs(run_dir) or [run_dir]  # an ensemble's members, one colour each
    plot_learning_curves(curves, written[0])
    plot_grad_norms(curves, written[1])
    evaluation = (summary if summary is not None else runs.read_summary(run_dir)).get("evaluation", {})
    split = "test" if "test" in evaluation else "val" if "val" in evaluation else None
    if split is not None:
        report = evaluation[split]
        plot_confusion_matrix(report["confusion_matrix"], report["classes"], run_dir / CONFUSION_MATRIX,
                              f"Confusion matrix ({split}, best checkpoint)")
        written.append(run_dir / CONFUSION_MATRIX)
        if report.get("reliability"):
            plot_reliability(report["reliability"], run_dir / RELIABILITY,
                             f"Reliability ({split}, T = {report.get('temperature', 1.0):.2f}, ECE {report['ece']:.3f})")
            written.append(run_dir / RELIABILITY)
    return written
