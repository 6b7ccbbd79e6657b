"""Sweeps: every grid combination × N seeds as ordinary runs under one sweep directory, in parallel."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foodcls.config import Config, derive, load_config, parse_yaml_value
from foodcls.errors import ConfigError
from foodcls.inference.evaluate import mean_std
from foodcls.experiments.executors import check_cluster
from foodcls.experiments.jobs import train_runs
from foodcls.fileio import atomic_write_json
from foodcls.runs import unique_dir

METRICS = ("test_accuracy", "val_accuracy")
RunCallback = Callable[[dict[str, Any]], None]


def split_values(text: str) -> list[str]:
    """'0.1,0.01' → ['0.1', '0.01']; commas inside brackets stay: '[32,32],[64]' → ['[32,32]', '[64]']."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [v.strip() for v in values]


def parse_grid(grid: list[str]) -> dict[str, list[Any]]:
    parsed: dict[str, list[Any]] = {}
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        if key.strip() in parsed:
            raise ConfigError(f"--grid {item!r}: {key.strip()} is given twice")
        parsed[key.strip()] = [parse_yaml_value(v) for v in split_values(values)]
    return parsed


def plan_sweep(config_path: str | Path, grid: list[str], seeds: int, overrides: list[str]) -> list[tuple[dict[str, Any], list[Config]]]:
    """(params, one validated config per seed) for each grid combination; everything checked up front."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    base = load_config(config_path, overrides)
    axes = parse_grid(grid)
    plan = []
    for combination in itertools.product(*axes.values()) if axes else [()]:
        params = dict(zip(axes, combination))
        configs = []
        origin = f"--grid {', '.join(f'{k}={v}' for k, v in params.items())}"
        configs += [derive(base, {**params, "train.seed": base.train.seed + offset}, origin) for offset in range(seeds)]
        plan.append((params, configs))
    return plan


def summarise(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean ± std per combination; the best is chosen on val accuracy when every run has it, else test."""
    for entry in results:
        for metric in METRICS:
            values = [r[metric] for r in entry["runs"] if r.get(metric) is not None]
            entry["mean"][metric], entry["std"][metric] = mean_std(values)
    criterion = "val_accuracy" if all(e["mean"]["val_accuracy"] is not None for e in results) else "test_accuracy"
    scored = [e for e in results if e["mean"][criterion] is not None]
    best = max(scored, key=lambda e: e["mean"][criterion], default=None)
    return {"criterion": criterion, **best} if best is not None else None


def run_sweep(
    config_path: str | Path, grid: list[str], *, seeds: int = 1, overrides: list[str] = (), workers: int | None = None,
    runs_root: str | Path = "runs", on_run: RunCallback | None = None, on_start: Callable[[int], None] | None = None,
    cluster: str | None = None,
) -> dict[str, Any]:
    """Run the sweep; returns (and writes to sweep.json) per-combination runs, mean and std, and the best."""
    plan = plan_sweep(config_path, list(grid), seeds, list(overrides))
    check_cluster(cluster)  # an unreachable cluster is one line, before anything is written
    from foodcls.tracking import check_tracking

    check_tracking(plan[0][1][0].tracking.mlflow)
    stem = Path(config_path).stem
    sweep_dir = unique_dir(runs_root, f"sweep-{stem}")
    results = [{"params": params, "runs": [], "mean": {}, "std": {}} for params, _ in plan]
    jobs = [(i, config) for i, (_, configs) in enumerate(plan) for config in configs]
    if on_start is not None:
        on_start(len(jobs))
    configs = [config for _, config in jobs]
    names = [f"{stem}-{i + 1}-seed{config.train.seed}" for i, config in jobs]
    for indices, outcomes in train_runs(configs, names, sweep_dir, workers=workers, cluster=cluster):
        for index, outcome in zip(indices, outcomes):
            combination, config = jobs[index]
            run = {"run_dir": outcome.run_dir, "seed": config.train.seed, "status": outcome.status,
                   **({"error": outcome.error} if outcome.failed else
                      {"test_accuracy": outcome.test_accuracy, "val_accuracy": outcome.val_accuracy})}
            run["params"] = results[combination]["params"]
            results[combination]["runs"].append(run)
            if on_run is not None:
                on_run(run)
    for entry in results:
        entry["runs"].sort(key=lambda r: r["seed"])
    report = {"sweep_dir": str(sweep_dir), "seeds": seeds, "results": results}
    report["best"] = summarise(results)
    atomic_write_json(sweep_dir / "sweep.json", report)
    uri = plan[0][1][0].tracking.mlflow
    if uri:
        from foodcls.tracking import best_effort, log_group

        best = report["best"] or {}
        warning = best_effort(log_group, uri, sweep_dir.name, {"grid": " ".join(grid), "seeds": seeds},
                              [r["run_dir"] for e in results for r in e["runs"]], {"best_" + k: v for k, v in best.get("mean", {}).items()})
        report["warnings"] = [warning] if warning else []
    return report
