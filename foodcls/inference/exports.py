"""`foodcls predict --input EXPORT`: a model run over an Open Food Facts export as it comes (every format
`data build` reads), a batch at a time: memory stays flat in the rows.

One output row per product row of the export, in its order (duplicates kept): `code`, `product_name`,
`categories_tags` (as in the export), `predicted`, `p_<class>`, `decision`, `suggest` (and `set` with a
coverage), `reason`. A product the model cannot score is never dropped: its decision is `missing` (a
required nutrient unknown) or `invalid` (a value no label can hold, or a line that could not be read) and
`reason` says which. The readers are offdata's, and so are the checks of a plausible product (clean.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from foodcls.errors import DataError
from foodcls.features import REQUIRED_FEATURES
from foodcls.inference.judge import TrustOptions, check_trust_options, judge
from foodcls.inference.network import Predictor

MISSING, INVALID = "missing", "invalid"
TEXT_COLUMNS = ("code", "product_name", "categories_tags")
BatchCallback = Callable[[Path, int, int], None]  # (export, rows read so far, its bytes read so far)


@dataclass
class ExportSummary:
    """What a run over an export did: rows read and written, scored, refused (missing / invalid), suggested
    and predicted per class, and the unknown values filled with the training medians, per feature."""

    export: str
    format: str = ""
    rows: int = 0  # product rows of the export (unreadable lines included)
    written: int = 0  # rows of the output (all, or with --uncategorised the products without categories)
    scored: int = 0
    missing: int = 0
    invalid: int = 0
    uncategorised: int = 0  # products without categories, among the rows read
    predicted: dict[str, int] = field(default_factory=dict)
    suggested: dict[str, int] = field(default_factory=dict)
    filled: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def fill_warnings(self, fill: dict[str, float]) -> list[str]:
        from foodcls.inference.predict import fill_warnings

        return fill_warnings(self.filled, fill, self.scored)

    def to_json(self) -> dict[str, Any]:
        return {"export": self.export, "format": self.format, "rows": self.rows, "written": self.written, "scored": self.scored,
                "missing": self.missing, "invalid": self.invalid, "uncategorised": self.uncategorised, "predicted": self.predicted,
                "suggested": self.suggested, "suggested_total": sum(self.suggested.values()), "filled": self.filled,
                "reasons": self.reasons, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows / self.seconds) if self.seconds > 0 else None}


def _reason(predictor: Predictor, allow_missing: bool):
    """A polars expression: why a product cannot be scored (null when it can). A required nutrient the model
    uses is `missing` unless allow_missing (then its training median fills it, as for an optional one)."""
    import polars as pl

    from foodcls.offdata.clean import first_failed, value_checks
    from foodcls.offdata.read import INVALID as UNREADABLE

    required = () if allow_missing else tuple(f for f in predictor.features if f in REQUIRED_FEATURES)
    checks = value_checks(predictor.features, required)
    reason = first_failed(checks, lambda r: pl.lit(f"{MISSING if r.startswith('missing_') else INVALID}: {r}"),
                          pl.lit(None, pl.String))
    return pl.when(pl.col(UNREADABLE).is_not_null()).then(pl.format("invalid: {}", pl.col(UNREADABLE))).otherwise(reason)


def predict_export(predictor: Predictor, export: str | Path, out: IO[str], options: TrustOptions = TrustOptions(), *,
                   uncategorised: bool = False, allow_missing: bool = False, on_batch: BatchCallback | None = None) -> ExportSummary:
    """Write the predictions for every product row of the export (or only those without categories) as CSV to
    `out`, a batch at a time; returns the summary. The first batch is read before anything is written."""
    import polars as pl

    from foodcls.offdata.clean import product_name, with_nutrients
    from foodcls.offdata.columns import NUTRIENT_COLUMNS, PREDICT_REQUIRED
    from foodcls.offdata.read import INVALID as UNREADABLE
    from foodcls.offdata.read import SourceStats, read_export
    from foodcls.offdata.rules import has_categories

    check_trust_options(predictor, options)
    path = Path(export)
    features = list(predictor.features)
    required = PREDICT_REQUIRED + tuple(c for f in features if f in REQUIRED_FEATURES and not allow_missing
                                        for c in NUTRIENT_COLUMNS[f][:1])
    reason = _reason(predictor, allow_missing)

    def transform(frame):
        named = [product_name().alias("_name")] if predictor.name is not None else []
        return with_nutrients(frame).with_columns(reason.alias("reason"), (~has_categories(pl.col("categories_tags"))).alias("_bare"),
                                                  *named)

    stats = SourceStats(path)
    summary = ExportSummary(str(path))
    classes = predictor.classes
    summary.predicted = dict.fromkeys(classes, 0)
    summary.suggested = {c: 0 for c in classes if c != "other"}
    summary.filled = dict.fromkeys(features, 0)
    started = time.perf_counter()
    header = True
    for batch in read_export(path, stats, transform, keep_invalid=True, required=required, checksum=False):
        summary.rows += len(batch)
        summary.uncategorised += int(batch["_bare"].sum())
        if uncategorised:  # (an unreadable line's categories are unknown: it is not written)
            batch = batch.filter(pl.col("_bare") & pl.col(UNREADABLE).is_null())
        written = _predictions(predictor, batch, features, options, summary)
        written.write_csv(out, include_header=header, float_precision=6, null_value="")
        header = False
        summary.written += len(written)
        if on_batch is not None:
            on_batch(path, summary.rows, stats.bytes_read)
    if header:  # an export without a product row: the header alone
        _predictions(predictor, _empty(features), features, options, summary).write_csv(out, include_header=True)
    summary.format = stats.format
    summary.seconds = time.perf_counter() - started
    return summary


def _empty(features: list[str]):
    import polars as pl

    return pl.DataFrame(schema={**{c: pl.String for c in TEXT_COLUMNS}, **{f: pl.Float64 for f in features},
                                "reason": pl.String, "_bare": pl.Boolean, "invalid_line": pl.String, "_name": pl.String})


def _predictions(predictor: Predictor, batch, features: list[str], options: TrustOptions, summary: ExportSummary):
    """The output rows of one batch, counted into the summary."""
    import polars as pl

    classes = predictor.classes
    n = len(batch)
    scorable = batch["reason"].is_null().to_numpy()
    values = batch.select(features).to_numpy().astype(np.float32)[scorable] if n else np.zeros((0, len(features)), np.float32)
    for j, feature in enumerate(features):
        summary.filled[feature] += int(np.isnan(values[:, j]).sum())
    probabilities = np.full((n, len(classes)), np.nan, dtype=np.float64)
    decision = np.where(batch["reason"].fill_null("").str.starts_with(MISSING).to_numpy(), MISSING, INVALID).astype(object)
    suggest = np.zeros(n, dtype=bool)
    predicted = np.full(n, None, dtype=object)
    sets = np.full(n, None, dtype=object) if options.coverage is not None else None
    if scorable.any():
        names = batch["_name"].filter(pl.Series(scorable)).to_list() if predictor.name is not None else None
        judged = judge(predictor, values, options, names)
        probabilities[scorable] = judged.probabilities
        decision[scorable] = judged.decisions
        suggest[scorable] = judged.suggest
        top = judged.probabilities.argmax(axis=1)
        predicted[scorable] = np.array(classes, dtype=object)[top]
        if sets is not None:
            sets[scorable] = ["|".join(s) for s in judged.sets]
        for k, count in enumerate(np.bincount(top, minlength=len(classes)).tolist()):
            summary.predicted[classes[k]] += count
        for k, count in enumerate(np.bincount(top[judged.suggest], minlength=len(classes)).tolist()):
            if classes[k] in summary.suggested:
                summary.suggested[classes[k]] += count
    summary.scored += int(scorable.sum())
    summary.missing += int((decision == MISSING).sum())
    summary.invalid += int((decision == INVALID).sum())
    for text in batch["reason"].drop_nulls().to_list():
        key = "invalid: unreadable line" if " line " in text else text  # (each line's number is in its row)
        summary.reasons[key] = summary.reasons.get(key, 0) + 1
    columns = {name: batch[name] for name in TEXT_COLUMNS}
    columns["predicted"] = pl.Series("predicted", predicted.tolist(), dtype=pl.String)
    for k, name in enumerate(classes):
        columns[f"p_{name}"] = pl.Series(f"p_{name}", probabilities[:, k], nan_to_null=True)
    columns["decision"] = pl.Series("decision", decision.tolist(), dtype=pl.String)
    columns["suggest"] = pl.Series("suggest", suggest)
    if sets is not None:
        columns["set"] = pl.Series("set", sets.tolist(), dtype=pl.String)
    columns["reason"] = batch["reason"]
    return pl.DataFrame(columns)


def refuse_bad_export(path: str | Path) -> None:
    """A missing file or a directory is one line before anything else."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an export file")
