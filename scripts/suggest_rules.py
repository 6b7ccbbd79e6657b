"""How the suggestion thresholds' rule changes their precision on a source the model never saw: for each fold of
a leave-one-source-out cv (`foodcls cv --group-by source` of a recipe with train.calibration: sources), the
thresholds are fitted again on the fold's own calibration rows (its out-of-source predictions) by each rule,
and applied to the fold's held-out source. Also lists the wrong suggestions of the recipe's own rule.

    python scripts/suggest_rules.py CV_DIR [--score KIND] [--precision 0.9] [--examples 20]

Rules: pooled (the shipped one: the calibration rows' precision reaches P), p0.95 / p0.97 (a stricter target),
cp0.05 (the Clopper–Pearson 95 % lower bound of that precision reaches P), jackknife (every subset of the
calibration rows with one source left out reaches P).
"""

from __future__ import annotations

import argparse
import glob
import random
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import yaml
from scipy.stats import beta

from foodcls.data import read_labelled_csv
from foodcls.inference.checkpoint import load_checkpoint
from foodcls.inference.predict import load_predictor
from foodcls.inference.suggest import open_set_scores

RULES = ("pooled", "p0.95", "p0.97", "cp0.05", "jackknife")


def thresholds(probabilities, labels, scores, rule, groups, precision, named):
    predicted, out = probabilities.argmax(axis=1), {}
    for k in range(named):
        rows = np.flatnonzero(predicted == k)
        order = np.argsort(-scores[rows], kind="stable")
        ranked, correct = scores[rows][order], labels[rows][order] == k
        n, hits = np.arange(1, len(ranked) + 1), np.cumsum(correct)
        if rule == "pooled":
            ok = hits / n >= precision
        elif rule.startswith("p"):
            ok = hits / n >= float(rule[1:])
        elif rule.startswith("cp"):
            ok = np.where(hits > 0, beta.ppf(float(rule[2:]), hits, n - hits + 1), 0.0) >= precision
        else:
            ok, g = hits / n >= precision, groups[rows][order]
            for source in np.unique(groups):
                keep = g != source
                ok &= np.where(np.cumsum(keep) > 0, np.cumsum(correct & keep) / np.maximum(np.cumsum(keep), 1) >= precision, True)
        last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
        reached = np.flatnonzero(ok & last_of_tie)
        out[k] = float(ranked[reached[-1]]) if len(reached) else np.inf
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--precision", type=float, default=0.9)
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--score", help="the open-set score to rank by (default: the folds' own; any kind cv stores)")
    args = parser.parse_args()
    totals = {r: [0, 0, 0] for r in RULES}
    wrong, examples = Counter(), []
    for fold_dir in sorted(args.cv_dir.glob("fold*-*/"), key=lambda p: int(p.name[4:].split("-")[0])):
        checkpoint = next(fold_dir.glob("checkpoints/best.safetensors"))
        arrays, predictor = load_checkpoint(checkpoint).arrays, load_predictor(checkpoint)
        kind, named = args.score or predictor.open_set_score, sum(c != "other" for c in predictor.classes)
        cal_p, cal_y = arrays["calibration.probabilities"], arrays["calibration.labels"]
        cal_s = arrays.get(f"calibration.scores.{kind}", arrays["calibration.open_set_scores"])
        # The calibration rows come source by source, in the sorted order of the fold's training sources.
        config = yaml.safe_load((fold_dir / "config.yaml").read_text())
        files = [e["path"] if isinstance(e, dict) else e for e in config["data"]["train"] if not (isinstance(e, dict) and e.get("train_only"))]
        source = pl.concat([pl.read_csv(f, infer_schema_length=0).select("source") for f in files])["source"].to_numpy()
        names = sorted(set(source))
        groups = np.repeat(np.arange(len(names)), [int((source == s).sum()) for s in names])
        number = int(fold_dir.name[4:].split("-")[0])
        held = read_labelled_csv(args.cv_dir / "folds" / f"fold{number}-eval.csv", predictor.features, classes=predictor.classes)
        outputs = predictor.outputs(held.features, keep_hidden=kind == "knn", names=held.columns.get("name") if predictor.name else None)
        scores = open_set_scores(kind, outputs.probabilities, outputs.logits, predictor.classes, outputs.hidden, predictor.knn_reference)
        predicted = outputs.probabilities.argmax(axis=1)
        for rule in RULES:
            limit = thresholds(cal_p, cal_y, cal_s, rule, groups, args.precision, named)
            cut = np.array([limit.get(k, np.inf) for k in range(len(predictor.classes))])
            suggested = (predicted < named) & (scores >= cut[predicted])
            right = suggested & (predicted == held.labels)
            totals[rule][0] += int(suggested.sum())
            totals[rule][1] += int(right.sum())
            totals[rule][2] += int((held.labels < named).sum())
            if rule == "pooled":
                for i in np.flatnonzero(suggested & ~right):
                    wrong[(predictor.classes[predicted[i]], predictor.classes[held.labels[i]])] += 1
                    examples.append((predictor.classes[predicted[i]], predictor.classes[held.labels[i]],
                                     str(held.columns.get("name", [""] * len(held))[i]), str(held.columns["source"][i])))
    print(f"score: {kind}; target precision {args.precision}")
    for rule, (made, hits, in_class) in totals.items():
        print(f"{rule:10s} suggested {made:5d}  precision {hits / made if made else float('nan'):.3f}  recall {hits / in_class:.3f}")
    print("wrong suggestions (suggested, true):", wrong.most_common())
    random.seed(0)
    for example in random.sample(examples, min(args.examples, len(examples))):
        print("  ", example)


if __name__ == "__main__":
    main()
