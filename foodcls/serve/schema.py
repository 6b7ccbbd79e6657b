"""The OpenAPI description of `foodcls serve`'s bodies and answers, for one checkpoint.

The routes parse their JSON by hand (orjson, checked column by column: pydantic models per product cost
most of a batch's time), so FastAPI cannot see what they take: these JSON Schemas say it, exactly as the
checks do — the checkpoint's nutrients required (and nothing else but the name and the options), each in its
range, coverage and precision only where the checkpoint can give them — so that a client generator, the
/docs form of a copy of the schema, or a fuzzer (Schemathesis, tested) gets the real contract, and every
answer that is not a 200 is declared: 400 (not JSON), 413 (over the size limit), 422 (a value refused)."""

from __future__ import annotations

from typing import Any

from foodcls.features import NAME, NUTRIENTS, REQUIRED_FEATURES
from foodcls.inference.network import Predictor

def _nutrient(name: str, known: bool) -> dict[str, Any]:
    """A nutrient's value; known: a number (else null too: unknown)."""
    nutrient = NUTRIENTS[name]
    kind = "integer" if nutrient.whole else "number"
    return {"type": kind if known else [kind, "null"], "minimum": 0, "maximum": nutrient.high,
            "description": f"{nutrient.description}, {nutrient.unit}"}


def _known(predictor: Predictor) -> dict[str, Any]:
    """What a product must then hold: protein, carbs, fat and additives where the model uses them, as numbers
    (its optional nutrients may always be unknown: filled with the training medians, and said so)."""
    required = [f for f in predictor.features if f in REQUIRED_FEATURES]
    return {"required": required, "properties": {f: _nutrient(f, True) for f in required}}


def _product(predictor: Predictor, options: bool) -> dict[str, Any]:
    """A product: its nutrients (those the model uses required, unless allow_missing), its name, and with
    options the single product's options."""
    properties: dict[str, Any] = {name: _nutrient(name, False) for name in NUTRIENTS}
    properties[NAME] = {"type": ["string", "null"],
                        "description": "the product's name" + ("" if predictor.name is not None else " (this model ignores it)")}
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if options:
        properties.update(_options(predictor))
        properties["explain"] = {"type": "boolean", "description": "each value's contribution (integrated gradients)"}
        schema["anyOf"] = [_known(predictor), _allowing_missing()]
    return schema


def _allowing_missing() -> dict[str, Any]:
    return {"required": ["allow_missing"], "properties": {"allow_missing": {"const": True}}}


def _options(predictor: Predictor) -> dict[str, Any]:
    """allow_missing and the trust options the checkpoint can honour."""
    options: dict[str, Any] = {
        "allow_missing": {"type": "boolean", "description": "fill what the model uses but the product lacks with training medians"},
        "min_confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                           "description": "decide `unsure` below this top probability (null: the checkpoint's)"},
    }
    if predictor.conformal_scores is not None:
        options["coverage"] = {"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                               "description": "add the conformal set of classes that holds the true class this often"}
    if predictor.calibration is not None:
        options["precision"] = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1,
                                "description": "suggest at this precision (thresholds fitted on the checkpoint's calibration rows)"}
    return options


def _answer(predictor: Predictor) -> dict[str, Any]:
    return {"type": "object", "required": ["class", "probabilities", "decision", "suggest"],
            "properties": {"class": {"type": "string", "enum": list(predictor.classes)},
                           "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                           "decision": {"type": "string"}, "suggest": {"type": "boolean"},
                           "set": {"type": "array", "items": {"type": "string"}},
                           "warnings": {"type": "array", "items": {"type": "string"}}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    400: _json({"type": "object", "properties": {"detail": {"type": "string"}}}, "The body is not JSON."),
    413: _json({"type": "object", "properties": {"detail": {"type": "string"}}}, "The body is over the size limit (5 MB)."),
    422: _json({"type": "object", "properties": {"detail": {"type": "array", "items": {"type": "object"}}}},
               "A value refused: each bad field named (loc, msg, type)."),
}


def predict_route(predictor: Predictor) -> dict[str, Any]:
    """The keyword arguments of POST /predict's route: its body and its answers."""
    return {"openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"schema": _product(predictor, True)}}}},
            "responses": {200: _json(_answer(predictor), "The class, its probabilities, decision and suggest."), **ERRORS}}


def batch_route(predictor: Predictor, max_batch: int) -> dict[str, Any]:
    """The keyword arguments of POST /predict/batch's route."""
    body = {"type": "object", "required": ["products"], "additionalProperties": False,
            "properties": {"products": {"type": "array", "maxItems": max_batch, "items": _product(predictor, False)},
                           **_options(predictor)},
            # Each product holds the model's nutrients, unless the batch allows missing ones.
            "anyOf": [{"properties": {"products": {"items": _known(predictor)}}}, _allowing_missing()]}
    answer = {"type": "object", "required": ["predictions"], "properties": {"predictions": {"type": "array", "items": _answer(predictor)},
                                                                           "warnings": {"type": "array", "items": {"type": "string"}}}}
    return {"openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}},
            "responses": {200: _json(answer, "One answer per product, in order."), **ERRORS}}
