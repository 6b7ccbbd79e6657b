"""A run's model as an MLflow model: the `python_function` flavor over the numpy predictor, with a signature and
an input example, so that `mlflow.pyfunc.load_model("runs:/<id>/model").predict(df)` answers as `foodcls predict`
does and the model registry can hold it. Logged beside the run's files when it is tracked (tracking.py);
the ONNX graph too, where the `onnx` extra is installed. Imported only when MLflow is used (it imports mlflow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow

MODEL_NAME = "model"  # runs:/<run id>/model


class FoodclsModel(mlflow.pyfunc.PythonModel):
    """predict(df): the products' columns (the model's nutrients; `name` for a model that reads names) → one row
    each: predicted, p_<class>…, decision, suggest — the numbers `foodcls predict` gives."""

    def load_context(self, context: Any) -> None:
        from foodcls.inference.predict import load_predictor

        self.predictor = load_predictor(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # (no type hints: MLflow reads them as an input schema)
        """params: min_confidence (≤ 0: the checkpoint's), precision of suggestions (≤ 0: the checkpoint's operating
        point), allow_missing."""
        import pandas as pd

        from foodcls.inference.inputs import as_columns, check_values
        from foodcls.inference.judge import TrustOptions, judge

        predictor = self.predictor
        params = params or {}
        allow_missing = bool(params.get("allow_missing", False))
        values, names = as_columns(model_input, predictor.features, predictor.name is not None)
        check_values(values, predictor.features, allow_missing)
        given = {k: float(params[k]) for k in ("min_confidence", "precision") if params.get(k) is not None and float(params[k]) > 0}
        options = TrustOptions(given.get("min_confidence"), None, given.get("precision"))
        judged = judge(predictor, values, options, names)
        out = {"predicted": judged.predicted()}
        out.update({f"p_{c}": judged.probabilities[:, k] for k, c in enumerate(predictor.classes)})
        out.update(decision=judged.decisions, suggest=judged.suggest)
        return pd.DataFrame(out)


def input_example(predictor: Any) -> Any:
    """Two products at the training medians (one with a name, for a model that reads names)."""
    import pandas as pd

    example = {f: [float(predictor.prep.fill[i])] * 2 for i, f in enumerate(predictor.features)}
    if predictor.name is not None:
        example["name"] = ["Sirop de fraise", ""]
    return pd.DataFrame(example)


def log_model(run_id: str, run_dir: Path, checkpoint: Path, register: str | None = None) -> None:
    """Log the run's model (and its ONNX graph, with the `onnx` extra) into the MLflow run run_id of the tracking
    URI already set; with register, add it to the model registry under that name."""
    import importlib.util
    import tempfile

    from mlflow.models import ModelSignature, infer_signature

    from foodcls.inference.predict import load_predictor

    predictor = load_predictor(checkpoint)
    example = input_example(predictor)
    model = FoodclsModel()
    model.predictor = predictor
    # Parameters with defaults that mean "the checkpoint's own" (MLflow fills a default in for a parameter not given).
    inferred = infer_signature(example, model.predict(None, example), params={"min_confidence": 0.0, "precision": 0.0,
                                                                             "allow_missing": False})
    # No input schema: MLflow would refuse an integer additives column against the example's floats (and the other
    # way round); foodcls checks its inputs itself, naming the column, row and value.
    signature = ModelSignature(inputs=None, outputs=inferred.outputs, params=inferred.params)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=FoodclsModel(), artifacts={"checkpoint": str(checkpoint)},
                                       signature=signature, input_example=example,
                                       pip_requirements=["foodcls", "numpy", "pandas", "safetensors"])
        if importlib.util.find_spec("onnx") is not None:
            from foodcls.inference.export import export

            with tempfile.TemporaryDirectory() as tmp:
                mlflow.log_artifact(str(export(checkpoint, Path(tmp) / "model.onnx")), artifact_path="onnx")
    if register:
        mlflow.register_model(info.model_uri, register)
