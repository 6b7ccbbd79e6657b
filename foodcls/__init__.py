"""foodcls: sort packaged food into beverages, meats, snacks and desserts (and `other`) from the numbers on a
nutrition label, and the product's name.

As a library (foodcls/api.py; nothing heavier than numpy is imported until it is used, torch only by train):
    model = foodcls.load("runs/…")       model.predict_proba(df), model.decide(df), model.explain(df)
    run = foodcls.train("configs/mlp.yaml", overrides=["train.epochs=50"])
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Decisions", "Model", "TrainedRun", "__version__", "load", "train"]


def __getattr__(name: str) -> Any:
    """The library's entry points, imported on first use (`import foodcls` stays as quick as the CLI's --help)."""
    if name in ("Decisions", "Model", "TrainedRun", "load", "train"):
        from foodcls import api

        return getattr(api, name)
    raise AttributeError(f"module 'foodcls' has no attribute {name!r}")
