"""`foodcls data build`: exports in, DIR/{train,val,test}.csv + datacard.json + README.md out."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from foodcls import __version__
from foodcls.data import TRACE_COLUMNS, LabelledData, labelled_csv_text
from foodcls.features import NAME
from foodcls.errors import ConfigError, DataError
from foodcls.features import ALL_FEATURES
from foodcls.fileio import atomic_write_json, atomic_write_text, default_mode, sync_directory, write_error
from foodcls.offdata.clean import DROP_REASONS, NUMERIC, classify
from foodcls.offdata.dedup import SeenKeys
from foodcls.offdata.read import SourceStats, read_export
from foodcls.offdata.rules import LabelRules, load_rules

SPLITS = ("train", "val", "test")
BUILT_COLUMNS = (*TRACE_COLUMNS, NAME)  # after the label and the nine nutrients: source, code, and the product's name
BatchCallback = Callable[[Path, int, int], None]  # (source, rows read so far, its bytes read so far)


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' → fractions of train, val, test; non-negative, summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--split {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6 or parts[0] == 0:
        raise ConfigError(f"--split {text!r}: expected three non-negative fractions summing to 1, train > 0")
    return parts  # type: ignore[return-value]


def split_of(key: str, fractions: tuple[float, float, float]) -> str:
    """A product's split follows from a hash of its key alone: stable as the data grow."""
    position = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if position < fractions[0]:
        return "train"
    return "val" if position < fractions[0] + fractions[1] else "test"


def build_dataset(
    sources: list[str | Path], out_dir: str | Path, rules_path: str | Path | None = None,
    split: str = "0.8,0.1,0.1", on_batch: BatchCallback | None = None, *, force: bool = False, other: bool | None = None,
) -> dict[str, Any]:
    """Read, label, clean, de-duplicate and split the sources; write the files; return the datacard.
    out_dir ends up either complete or as it was; two builds into one out_dir at once: the second is refused.
    An out_dir that holds anything but a previous build's output is refused unless force: replacing it
    would delete the user's files (`--out data` once took data/demo with it)."""
    fractions = parse_split(split)
    rules = load_rules(rules_path, other)
    if not sources:
        raise DataError("give at least one export file")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        # A build replaces --out whole (a fresh sibling swapped in): not the directory the user stands in.
        raise DataError(f"--out {out_dir}: is the current directory (or holds it); a build replaces --out whole: "
                        "give a directory of its own, such as data/off")
    out = Path(os.path.abspath(out))  # `.`, `..`: the lock and the staging directory go beside its real name
    with build_lock(out):
        if not force:
            check_replaceable(out)
        return _build(sources, out, rules, fractions, on_batch)


def is_build_output(directory: Path) -> bool:
    """Whether a directory is what `foodcls data build` wrote: its datacard.json is ours."""
    try:
        card = json.loads((directory / "datacard.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(card, dict) and "foodcls_version" in card and isinstance(card.get("sources"), list)


def check_replaceable(out: Path) -> None:
    """Refuse, before anything is read or written, to replace a directory that is neither empty nor a
    previous build's output."""
    if out.is_dir() and any(out.iterdir()) and not is_build_output(out):
        raise DataError(f"--out {out}: not the output of a previous `foodcls data build` (no datacard.json of ours); "
                        "replacing it would delete what it holds: choose another --out, or add --force")


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on out_dir's sibling .<name>.lock for the whole build (released if we crash)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(out.parent / f".{out.name}.lock", "a+")  # noqa: SIM115 - closed below
    except OSError as error:
        raise write_error(out, error) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{out}: another `foodcls data build` is writing this directory right now") from None
        yield
    finally:
        handle.close()


class SplitFiles:
    """train.csv, val.csv and test.csv, written batch by batch as the products come, and what the
    datacard counts of them: memory does not grow with the rows."""

    def __init__(self, directory: Path, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self.handles = {}
        for split_name in SPLITS:
            self.handles[split_name] = handle = open(directory / f"{split_name}.csv", "w", encoding="utf-8", newline="")  # noqa: SIM115
            handle.write(labelled_csv_text(_split_data(pl.DataFrame(), classes), BUILT_COLUMNS))
        self.per_split = {s: np.zeros(len(classes), dtype=np.int64) for s in SPLITS}
        self.known = np.zeros(len(NUMERIC), dtype=np.int64)

    def write(self, split_name: str, rows: pl.DataFrame) -> None:
        data = _split_data(rows, self.classes)
        self.handles[split_name].write(labelled_csv_text(data, BUILT_COLUMNS, header=False))
        self.per_split[split_name] += np.bincount(data.labels, minlength=len(self.classes))
        self.known += (~np.isnan(data.features)).sum(axis=0)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


def _split_data(rows: pl.DataFrame, classes: tuple[str, ...]) -> LabelledData:
    """Kept products (the nine nutrients, label, source, code) as the labelled set written to CSV."""
    if not len(rows):
        empty = np.zeros(0, dtype=object)
        return LabelledData(np.zeros((0, len(NUMERIC)), dtype=np.float32), np.zeros(0, dtype=np.int64), ALL_FEATURES, "",
                            columns={"source": empty, "code": empty, NAME: empty}, classes=classes)
    values = rows.select(NUMERIC).to_numpy()  # float64, null → NaN
    columns = {"source": rows["source"].to_numpy().astype(object),
               "code": np.array([(code or "").strip() for code in rows["code"].to_list()], dtype=object),
               NAME: rows[NAME].to_numpy().astype(object)}
    return LabelledData(values.astype(np.float32), rows["label"].to_numpy().astype(np.int64), ALL_FEATURES, "",
                        columns=columns, classes=classes)


def _with_key_hashes(frame, rules):
    """classify, plus 64-bit hashes of the duplicate keys (computed in polars' threads, as the batch is read)."""
    return classify(frame, rules).with_columns(pl.col("key").hash(0).alias("key_hash"),
                                               pl.col("content_key").hash(0).alias("content_hash"))


def _build(sources, out: Path, rules, fractions, on_batch) -> dict[str, Any]:
    """Stream every source through classify → de-duplicate → split → CSV, in one pass, into a fresh
    sibling directory; then swap it in: out is never half-written."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    corrected = {"energy_kj_as_kcal": 0}  # products kept with a value mended, per kind of repair
    seen = SeenKeys()
    stats_list = []
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        files = SplitFiles(staging, rules.names)
        try:
            for source in sources:
                stats = SourceStats(Path(source))
                for batch in _classified_batches(source, stats, rules, on_batch):
                    counts = np.bincount(batch["reason"].to_numpy(), minlength=len(DROP_REASONS) + 1)
                    for index, reason in enumerate(DROP_REASONS):
                        dropped[reason] += int(counts[index + 1])
                    kept = batch.filter(pl.col("reason") == 0)
                    new = seen.first_seen(kept["key_hash"].to_numpy(), kept["content_hash"].to_numpy(),
                                          kept["content_key"].is_not_null().to_numpy())
                    dropped["duplicate"] += int((~new).sum())
                    kept = kept.filter(pl.Series(new)).with_columns(pl.lit(Path(source).name).alias("source"))
                    corrected["energy_kj_as_kcal"] += int(kept["energy_copied"].sum())
                    split = np.array([split_of(key, fractions) for key in kept["key"].to_list()], dtype="U5")
                    for split_name in SPLITS:
                        files.write(split_name, kept.filter(pl.Series(split == split_name)))
                dropped["ragged_row"] += stats.ragged
                stats_list.append(stats)
        finally:
            files.close()
        card = _datacard(stats_list, files, dropped, corrected, rules, fractions)
        atomic_write_json(staging / "datacard.json", card)
        atomic_write_text(staging / "README.md", datacard_markdown(card))
        _swap_in(staging, out)
    except OSError as error:
        raise write_error(out, error) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card


def _classified_batches(source, stats: SourceStats, rules, on_batch) -> Iterator[pl.DataFrame]:
    """The source's batches through classify, in file order (rows the reader left out skipped)."""
    next_row = 0
    for batch in read_export(source, stats, lambda frame: _with_key_hashes(frame, rules)):
        if len(batch):
            if batch["row"][0] < next_row:
                raise DataError(f"{source}: internal error: batches arrived out of order")
            next_row = int(batch["row"][-1]) + 1
        if on_batch is not None:
            on_batch(stats.path, max(stats.rows, next_row), stats.bytes_read)
        yield batch


def _datacard(stats_list, files: SplitFiles, dropped, corrected, rules: LabelRules, fractions) -> dict[str, Any]:
    per_split = {s: {c: int(files.per_split[s][i]) for i, c in enumerate(rules.names)} for s in SPLITS}
    splits = {s: sum(per_split[s].values()) for s in SPLITS}
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "foodcls_version": __version__,
        "sources": [
            {"path": str(s.path), "format": s.format, "sha256": s.sha256, "rows": s.rows, "ragged_rows": s.ragged}
            for s in stats_list
        ],
        "rows_read": sum(s.rows for s in stats_list),
        "rows_kept": sum(splits.values()),
        "classes": list(rules.names),
        "per_class": {c: sum(per_split[s][c] for s in SPLITS) for c in rules.names},
        "splits": splits,
        "per_split": per_split,
        "known_values": {feature: int(files.known[i]) for i, feature in enumerate(NUMERIC)},
        "dropped": dropped,
        "corrected": corrected,
        "split_fractions": dict(zip(SPLITS, fractions)),
        "rules": rules.to_json(),
    }


def _swap_in(staging: Path, out: Path) -> None:
    os.chmod(staging, default_mode(directory=True))  # mkdtemp made it 0700
    if out.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, previous / out.name)
        os.replace(staging, out)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, out)
    sync_directory(out.parent)


def datacard_markdown(card: dict[str, Any]) -> str:
    lines = [
        "# Open Food Facts training data",
        "",
        f"Built by `foodcls data build` (foodcls {card['foodcls_version']}) on {card['created_at']} from real",
        "Open Food Facts products (open data, ODbL). Columns: `label`, the nine nutrients",
        f"(`{','.join(NUMERIC)}`; g per 100 g, additives a count, energy kcal per 100 g; empty where the",
        "label lacks the value), `source` (the export's file name) and `code` (the barcode).",
        "",
        "## Sources",
        "",
        "| file | format | rows | SHA-256 |",
        "|---|---|---|---|",
        *[f"| {s['path']} | {s['format']} | {s['rows']} | `{s['sha256']}` |" for s in card["sources"]],
        "",
        f"Rows read: {card['rows_read']}; kept: {card['rows_kept']}.",
        "",
        "## Kept, per class and split",
        "",
        "| class | " + " | ".join(SPLITS) + " | total |",
        "|---|" + "---|" * (len(SPLITS) + 1),
        *[f"| {c} | " + " | ".join(str(card["per_split"][s][c]) for s in SPLITS) + f" | {card['per_class'][c]} |" for c in card["classes"]],
        "",
        "## Known values per nutrient (of the products kept)",
        "",
        "| nutrient | known |",
        "|---|---|",
        *[f"| {feature} | {count} |" for feature, count in card["known_values"].items()],
        "",
        "## Dropped, per reason",
        "",
        "| reason | rows |",
        "|---|---|",
        *[f"| {reason} | {count} |" for reason, count in card["dropped"].items()],
        "",
        "## Kept with a value corrected",
        "",
        "| correction | products |",
        "|---|---|",
        *[f"| {kind} | {count} |" for kind, count in card["corrected"].items()],
        "",
        "`energy_kj_as_kcal`: the export gave one figure as both kcal and kJ, and protein, carbohydrates",
        "and fat (4/4/9 kcal per g) show it was kJ; it was divided by 4.184.",
        "",
        "Labels come from `categories_tags` with the rules in datacard.json; each product goes to a",
        "split by a hash of its barcode (or of name, brand and nutrients where the barcode was mangled).",
        "",
    ]
    return "\n".join(lines)
