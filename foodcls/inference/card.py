"""MODEL_CARD.md: what a person reads to decide whether to trust a run's model — what it is, what it was
trained on, how it scored (with intervals, calibration and, where measured, products in none of its
classes), what it is for and where it fails, and exactly which file it describes. Written at the end of
every run, and again by `foodcls card RUN`; everything comes from the run directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from foodcls import runs
from foodcls.errors import RunError
from foodcls.fileio import atomic_write_text
from foodcls.redact import redact

CARD_FILE = "MODEL_CARD.md"


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _datacards(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The datacard.json of each `data build` output the config's data files come from, read now (relative to
    the current directory): what runs.data_provenance records when a run starts, and the card's fallback for
    runs from before it did."""
    cards = []
    for card_path in runs.datacard_paths(config):
        try:
            cards.append((str(card_path), json.loads(card_path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue
    return cards


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _cv_report(run_dir: Path) -> dict[str, Any] | None:
    """The cv.json of the cross-validation this run is a fold of, if it is one."""
    path = run_dir.parent / "cv.json"
    if not runs.is_cv_fold(run_dir) or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def model_card(run_dir: str | Path, summary: dict[str, Any] | None = None) -> str:
    """The card's Markdown for a finished (or interrupted) run (summary: the one about to be written)."""
    run_dir = runs.resolve_run_dir(run_dir)
    summary = summary if summary is not None else runs.read_summary(run_dir)
    checkpoint = runs.best_checkpoint(run_dir)
    if not checkpoint.exists():
        raise RunError(f"{run_dir}: no best checkpoint yet; a card describes a trained model")
    from foodcls.inference.predict import load_predictor

    predictor = load_predictor(checkpoint)
    config = predictor.config
    evaluation = summary.get("evaluation") if isinstance(summary.get("evaluation"), dict) else {}
    split = "test" if isinstance(evaluation.get("test"), dict) else "val" if isinstance(evaluation.get("val"), dict) else None
    report = evaluation.get(split, {}) if split else {}
    model, train = config.get("model", {}), config.get("train", {})
    sizes = [predictor.layers[0][0].shape[2], *[w.shape[1] for w, _ in predictor.layers]]
    name = predictor.name
    # every member's, the name's table included
    parameters = sum(w.size + b.size for w, b in predictor.layers) + (name.tables.size if name is not None else 0)
    method = predictor.calibration.method if predictor.calibration is not None else "temperature"
    fitted_on = ("out-of-source predictions: each source predicted by a model trained without it" if method == "sources" else "the validation rows")
    lines = [
        f"# Model card: {summary.get('name', run_dir.name)} ({run_dir.name})",
        "",
        f"A multi-layer perceptron that sorts packaged food products into **{', '.join(predictor.classes)}** from the "
        f"numbers on a nutrition label, trained by foodcls. Status: {summary.get('status', '?')}.",
        "",
        "## Model",
        "",
        f"- Layers {' → '.join(map(str, sizes))} ({parameters:,} parameters), {predictor.activation} activations, softmax output"
        + (f" divided by a temperature of {predictor.temperature:.3f} (calibrated on {fitted_on})" if predictor.temperature != 1.0 else "")
        + (f"; an ensemble of {predictor.members} networks (seeds {train.get('seed')}…), their probabilities averaged" if predictor.members > 1 else "")
        + (f", the last {model.get('nameless_members')} reading the nutrients alone (no name)" if model.get("nameless_members") else "")
        + ".",
        f"- Inputs, per 100 g: {', '.join(predictor.features)}; an unknown value is filled with its training median "
        f"({', '.join(f'{k} {v:g}' for k, v in predictor.fill_values.items())})"
        + (f"; and the product's name: hashed {'whole words and ' if name.hashing.words else ''}character "
           f"{name.hashing.ngram_min}–{name.hashing.ngram_max}-grams ({name.hashing.buckets:,} buckets), the mean of their learnt {name.hashing.dim}-vectors (zeros without a name)"
           if name is not None else "") + ".",
        f"- Classes, in output order: {', '.join(predictor.classes)}."
        + (" `other` stands for products in none of the named classes." if predictor.has_other else
           " It has no `other` class: **every product gets one of these**, including products that are none of them."),
        f"- Trained with {train.get('optimizer')} (lr {train.get('lr')}, batch {train.get('batch_size')}, seed {train.get('seed')}), "
        f"{summary.get('epochs_run')} epochs (best {summary.get('best_epoch')}, stopped by {summary.get('stop_reason')}), "
        f"{summary.get('train_seconds')} s; hidden {model.get('hidden')}.",
        "",
        "## Data",
        "",
    ]
    data = config.get("data", {}) if isinstance(config.get("data"), dict) else {}
    train_entries = data.get("train") if isinstance(data.get("train"), list) else [data.get("train")]
    for entry in train_entries:
        if isinstance(entry, dict):
            lines.append(f"- train: `{entry.get('path')}` (weight {entry.get('weight', 1)}"
                         + (", train-only: taught, never scored" if entry.get("train_only") else "") + ")")
        else:
            lines.append(f"- train: `{entry}`")
    for name in ("val", "test"):
        if data.get(name):
            lines.append(f"- {name}: `{data.get(name)}`")
    if data.get("val_fraction"):
        lines.append(f"- val: a stratified {data['val_fraction']:g} share of the training rows (seeded)")
    counts = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    lines.append(f"- rows: train {counts.get('train')}, val {counts.get('val')}, test {counts.get('test')}.")
    recorded = summary.get("data_provenance")
    provenance = recorded if isinstance(recorded, list) else [runs.provenance_entry(path, card) for path, card in _datacards(config)]
    for entry in provenance:
        if isinstance(entry, dict):
            lines.append(f"- built by `foodcls data build` ({entry.get('datacard')}, SHA-256 `{str(entry.get('sha256', ''))[:16]}…`): "
                         f"{entry.get('rows_kept')} products kept of {entry.get('rows_read')} read, per class {entry.get('per_class')}; "
                         f"sources: {', '.join(map(str, entry.get('sources') or []))}"
                         + ("." if isinstance(recorded, list) else " (read when this card was written: the build may have changed since)."))
    lines += ["", "## Evaluation", ""]
    status = runs.run_status(summary)
    if not report and status != "finished":
        lines.append({"running": "The run is still training: it is scored when it ends, and its card written again.",
                      "failed": f"The run failed before it was scored: {summary.get('error')}",
                      "pruned": "A search's pruner stopped this run early; it was not scored.",
                      }.get(status, "The run was interrupted before it was scored; `foodcls train --resume RUN` finishes it."))
    elif report:
        low, high = report.get("accuracy_ci", [None, None])
        lines += [
            f"On the {split} split ({report.get('n')} products): accuracy **{_num(report.get('accuracy'))}** (95 % interval "
            f"{_num(low)}–{_num(high)}), balanced accuracy {_num(report.get('balanced_accuracy'))}, macro-F1 {_num(report.get('macro_f1'))}.",
            "",
            "| class | precision | recall | F1 | products |",
            "|---|---|---|---|---|",
            *[f"| {name} | {_num(m['precision'])} | {_num(m['recall'])} | {_num(m['f1'])} | {m['support']} |"
              for name, m in report.get("per_class", {}).items()],
            "",
        ]
        if "ece" in report:
            sets = report.get("conformal")
            lines.append(f"Calibration: ECE {_num(report['ece'])}, NLL {_num(report['nll'])}, Brier {_num(report['brier'])}"
                         + (f"; the 90 % conformal sets held the true class {_num(sets['empirical_coverage'])} of the time, "
                            f"{_num(sets['mean_size'], 2)} classes on average" if sets else "") + " (reliability.png).")
        open_set = report.get("open_set")
        if open_set:
            lines.append(f"Products in none of the classes ({open_set['n']}): AUROC {_num(open_set['auroc'])}, rejected at 90 % "
                         f"in-class coverage {_num(open_set['rejected_at_coverage'].get('0.90'))}, given ≥ 0.9 for a named class "
                         f"{_num(open_set['share_confident_over_0_9'])}.")
        for warning in report.get("warnings", []):
            lines.append(f"- ⚠ {warning}")
    else:
        lines.append("No validation or test data: the model was never scored on rows it did not train on.")
    cv = _cv_report(run_dir)
    if cv and cv.get("pooled"):
        pooled = cv["pooled"]
        lines += ["", f"This run is one fold of a cross-validation ({cv.get('group_by') or 'stratified folds'}): pooled over its "
                      f"{len(cv.get('folds', []))} folds, {pooled['n']} products, accuracy {_num(pooled['accuracy'])}, balanced accuracy "
                      f"{_num(pooled['balanced_accuracy'])}."]
    lines += [
        "",
        "## Intended use and limitations",
        "",
        "- For sorting packaged products by their nutrition label into the classes above, as a learning and comparison "
        "tool. Not for dietary, medical or safety decisions.",
        "- Figures on a split of the training data's own sources overstate what holds on other sources: measured on "
        "Open Food Facts exports nobody designed against, the shipped recipes lose several points (docs/how-to/trust.md). "
        "Small classes (under 20 evaluation rows) give unreliable figures.",
        f"- Probabilities are calibrated on {fitted_on}"
        + ("; on a new source unlike the training sources they may be over- or under-confident. " if method == "sources" else
           " only; on a new source they may be over- or under-confident. ") +
        "`foodcls predict --min-confidence P` abstains (`unsure`), `--coverage 0.9` gives a set of classes instead of one.",
        "",
        "## Provenance",
        "",
        f"- Checkpoint `{checkpoint.relative_to(run_dir)}`, SHA-256 `{hashlib.sha256(checkpoint.read_bytes()).hexdigest()}`.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in _mapping(summary.get('versions')).items())}; trained {summary.get('started_at')} – "
        f"{summary.get('finished_at')}.",
        "- The full config is in config.yaml; every epoch's figures in metrics.jsonl.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, summary: dict[str, Any] | None = None) -> Path:
    """Write (or rewrite) the run's MODEL_CARD.md; returns its path. A summary.json too damaged to read a
    figure from is one line, not a traceback."""
    run_dir = runs.resolve_run_dir(run_dir)
    path = run_dir / CARD_FILE
    try:
        text = model_card(run_dir, summary)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as error:
        raise RunError(f"{run_dir / runs.SUMMARY_FILE}: damaged ({type(error).__name__}: {error}); "
                       "`foodcls eval --checkpoint RUN` still scores the model") from None
    atomic_write_text(path, redact(text))
    return path
