"""The ASGI app: loads the checkpoint once, answers with the numpy predictor (torch is never imported).

POST /predict, POST /predict/batch, GET /health, GET /model, GET / (a page to try it). Input rules are
those of `foodcls predict`: a bad or missing value is a 422 naming each bad field; a malformed body a
400 or 422; a body over 5 MB a 413 — never a 500.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response

from foodcls.features import NAME, NUTRIENTS, REQUIRED_FEATURES, invalid_mask, value_problem
from foodcls.errors import DataError
from foodcls.redact import redact_secrets
from foodcls.serve import schema
from foodcls.inference.judge import TrustOptions, check_trust_options, judge
from foodcls.inference.predict import Predictor, fill_warnings, load_predictor, review_product

MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_BATCH = 10_000
EXPOSE_PATHS_ENV = "FOODCLS_EXPOSE_PATHS"  # set by `foodcls serve --expose-paths` for its workers
HOSTS_ENV = "FOODCLS_ALLOWED_HOSTS"  # the Host allow-list, comma-separated, set by `foodcls serve`
CHECKPOINT_ENV = "FOODCLS_CHECKPOINT"
PAGE = Path(__file__).with_name("page.html")


class BodyLimit:
    """ASGI middleware: reads the request body first; one over the limit is answered 413 without ever
    reaching the app (a stated Content-Length at once, a streamed body as soon as it passes the limit)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(send, self.limit)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _too_large(send, self.limit)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int) -> None:
    body = orjson.dumps({"detail": f"request body over {limit // (1024 * 1024)} MB"})
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type="application/json")


def _field_error(field: str, message: str, where: list[Any] | None = None) -> dict[str, Any]:
    return {"loc": ["body", *(where or []), field], "msg": message, "type": "value_error"}


def _check_product(predictor: Predictor, product: Any, allow_missing: bool) -> tuple[list[float], list[dict], list[str]]:
    """(values in feature order, errors naming each bad field, warnings) for one product object: the JSON
    types are checked here, the values by predict.review_product, as `foodcls predict` checks them."""
    if not isinstance(product, dict):
        return [], [{"loc": ["body"], "msg": "expected a JSON object of nutrient values", "type": "type_error"}], []
    errors, values = [], {}
    for field, value in product.items():
        if field in ("explain", "allow_missing"):
            if not isinstance(value, bool):
                errors.append(_field_error(field, f"must be true or false, got {repr(value)[:80]}"))
            continue
        if field in TRUST_FIELDS:
            continue
        if field == NAME:
            if value is not None and not isinstance(value, str):
                errors.append(_field_error(field, f"must be a string, got {repr(value)[:80]}"))
            continue
        if field not in NUTRIENTS:
            errors.append(_field_error(field, f"unknown field; nutrients are {', '.join(NUTRIENTS)}"))
        elif value is None:
            continue
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(_field_error(field, f"must be a number, got {value!r}"))
        else:
            values[field] = float(value)
    checked = review_product(values, predictor.features, predictor.fill_values, allow_missing, name_of=lambda f: f)
    errors += [_field_error(field, problem) for field, problem in checked.problems]
    if not allow_missing:
        named = {e["loc"][-1] for e in errors}
        errors += [_field_error(f, "missing (this model uses it; send allow_missing: true to use the training median)")
                   for f in checked.missing if f not in named]
    return checked.values, errors, checked.warnings


TRUST_FIELDS = ("min_confidence", "coverage", "precision")


def _trust_options(predictor: Predictor, options: dict[str, Any]) -> tuple[TrustOptions, list[dict]]:
    """min_confidence, coverage and precision from a request body (as `foodcls predict` takes them), or the 422 errors."""
    chosen: dict[str, float | None] = {}
    for name in TRUST_FIELDS:
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return TrustOptions(), [_field_error(name, f"must be a number, got {repr(value)[:80]}")]
        chosen[name] = None if value is None else float(value)
    trust = TrustOptions(**chosen)
    try:
        check_trust_options(predictor, trust)
    except DataError as error:
        field = next(f for f in TRUST_FIELDS if str(error).startswith(f"--{f.replace('_', '-')}"))
        return TrustOptions(), [_field_error(field, str(error).replace(f"--{field.replace('_', '-')}", "", 1).lstrip(": "))]
    return trust, []


def _probabilities(predictor: Predictor, row: np.ndarray) -> dict[str, float]:
    return {name: float(p) for name, p in zip(predictor.classes, row)}


def _short(path: str) -> str:
    """A data file as its folder and name (off/train.csv, synth-off/train.csv: two train.csv told apart)."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


def _hidden_paths(config: Any) -> Any:
    """The training config with every file path cut to its folder and file name: /model shows what a model was
    trained on without telling a client where this machine keeps its files."""
    if isinstance(config, dict):
        return {k: (_short(v) if isinstance(v, str) and k in ("path", "train", "val", "test", "init_from") else _hidden_paths(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [_short(v) if isinstance(v, str) else _hidden_paths(v) for v in config]
    return config


def allowed_hosts(host: str) -> list[str]:
    """The Host headers the server answers: for a loopback address only loopback names (a web page that
    rebinds its own DNS name to 127.0.0.1 cannot reach the API); for a named host that name and the loopback
    ones; for all interfaces (0.0.0.0, ::) any."""
    loopback = ["127.0.0.1", "localhost", "::1", "[::1]"]
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({host, *loopback})


def create_app(checkpoint: str | Path | None = None, *, expose_paths: bool | None = None,
               hosts: list[str] | None = None) -> FastAPI:
    """The app for one checkpoint (default: $FOODCLS_CHECKPOINT, set by `foodcls serve` for its workers)."""
    from foodcls.inference.checkpoint import resolve_checkpoint_path

    path = resolve_checkpoint_path(checkpoint or os.environ[CHECKPOINT_ENV])
    predictor = load_predictor(path)
    expose = os.environ.get(EXPOSE_PATHS_ENV) == "1" if expose_paths is None else expose_paths
    model_info = {
        "classes": list(predictor.classes), "features": list(predictor.features), "activation": predictor.activation,
        # A credential in a URI of the config (tracking.mlflow) is never served, --expose-paths or not.
        "config": redact_secrets(predictor.config if expose else _hidden_paths(predictor.config)), "metrics": predictor.metrics,
        "checkpoint": str(path) if expose else path.name, "temperature": predictor.temperature,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "fill_values": predictor.fill_values,
        "members": predictor.members, "open_set_score": predictor.open_set_score,
        "name": predictor.name.hashing.to_json() if predictor.name is not None else None,
        "calibration": ({"method": predictor.calibration.method, "rows": len(predictor.calibration.labels),
                         "sources": list(predictor.calibration.sources)} if predictor.calibration is not None else None),
        "operating_point": ({"precision": predictor.operating_point.precision, "thresholds": predictor.operating_point.thresholds}
                            if predictor.operating_point is not None else None),
    }
    # The OpenAPI page at /docs would load its scripts from a CDN: off, so nothing is fetched from outside.
    app = FastAPI(title="foodcls", docs_url=None, redoc_url=None)
    page = PAGE.read_text(encoding="utf-8")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return _json({"detail": [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in error.errors()]}, 422)

    async def body_json(request: Request) -> Any:
        raw = await request.body()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise _BadBody(f"malformed JSON body: {error}") from None

    @app.exception_handler(_BadBody)
    async def bad_body(request: Request, error: _BadBody) -> Response:
        return _json({"detail": str(error)}, 400)

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get("/model")
    async def model() -> Response:
        return _json(model_info)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/predict", **schema.predict_route(predictor))
    async def predict(request: Request) -> Response:
        product = await body_json(request)
        options = product if isinstance(product, dict) else {}
        values, errors, warnings = _check_product(predictor, product, bool(options.get("allow_missing")))
        trust, trust_errors = _trust_options(predictor, options)
        if errors or trust_errors:
            return _json({"detail": errors + trust_errors}, 422)
        row = np.array([values], dtype=np.float32)
        name = product.get(NAME) if predictor.name is not None else None
        judged = judge(predictor, row, trust, [name] if predictor.name is not None else None)
        probabilities = judged.probabilities[0]
        out = {"class": predictor.classes[int(probabilities.argmax())], "probabilities": _probabilities(predictor, probabilities),
               **judged.fields(0), "warnings": warnings}
        if options.get("explain"):
            from foodcls.inference.explain import integrated_gradients

            explanation = integrated_gradients(predictor, row[0].astype(np.float64), name=name)
            out["contributions"] = dict(zip(predictor.features, explanation.contributions.tolist()))
            if explanation.name is not None:
                out["contributions"][NAME] = explanation.name
                out["name_ngrams"] = dict(explanation.ngrams)
            out["baseline_probability"] = explanation.baseline_probability
        return _json(out)

    @app.post("/predict/batch", **schema.batch_route(predictor, MAX_BATCH))
    async def predict_batch(request: Request) -> Response:
        body = await body_json(request)
        products = body.get("products") if isinstance(body, dict) else None
        if not isinstance(products, list):
            return _json({"detail": [{"loc": ["body", "products"], "msg": "expected a list of products", "type": "type_error"}]}, 422)
        if len(products) > MAX_BATCH:
            return _json({"detail": [{"loc": ["body", "products"], "msg": f"at most {MAX_BATCH} products per request, got {len(products)}",
                                      "type": "value_error"}]}, 422)
        trust, trust_errors = _trust_options(predictor, body)
        unknown = sorted(set(body) - {"products", "allow_missing", *TRUST_FIELDS})
        trust_errors += [_field_error(k, "unknown field; a batch holds products, allow_missing and the trust options") for k in unknown[:20]]
        if "allow_missing" in body and not isinstance(body["allow_missing"], bool):
            trust_errors.append(_field_error("allow_missing", f"must be true or false, got {repr(body['allow_missing'])[:80]}"))
        if trust_errors:
            return _json({"detail": trust_errors}, 422)
        try:
            features = batch_features(predictor, products, body.get("allow_missing") is True)
        except _BatchErrors as errors:
            return _json({"detail": errors.errors}, 422)
        names = [p.get(NAME) if isinstance(p.get(NAME), str) else None for p in products] if predictor.name is not None else None
        judged = judge(predictor, features, trust, names)
        probabilities = judged.probabilities
        best = probabilities.argmax(axis=1)
        classes = predictor.classes
        if judged.sets is None:  # the common case, without a dict merge per product
            predictions = [{"class": classes[b], "probabilities": dict(zip(classes, p)), "decision": d, "suggest": s}
                           for b, p, d, s in zip(best.tolist(), probabilities.tolist(), judged.decisions, judged.suggest.tolist())]
        else:
            predictions = [{"class": classes[b], "probabilities": dict(zip(classes, p)), **judged.fields(i)}
                           for i, (b, p) in enumerate(zip(best.tolist(), probabilities.tolist()))]
        unknown = dict(zip(predictor.features, np.isnan(features).sum(axis=0).tolist()))
        return _json({"predictions": predictions, "warnings": fill_warnings(unknown, predictor.fill_values, len(products))})

    from starlette.middleware.trustedhost import TrustedHostMiddleware

    env_hosts = os.environ.get(HOSTS_ENV)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts or (env_hosts.split(",") if env_hosts else allowed_hosts("127.0.0.1")))
    return BodyLimit(app)


_NUMBER_TYPES = {int, float, type(None)}


class _BadBody(Exception):
    pass


class _BatchErrors(Exception):
    def __init__(self, errors: list[dict]) -> None:
        super().__init__(f"{len(errors)} bad values")
        self.errors = errors


def batch_features(predictor: Predictor, products: list[Any], allow_missing: bool) -> np.ndarray:
    """The products' values (n, features), checked column by column; _BatchErrors names each bad field."""
    if not all(isinstance(p, dict) for p in products):
        bad = next(i for i, p in enumerate(products) if not isinstance(p, dict))
        raise _BatchErrors([{"loc": ["body", "products", bad], "msg": "expected a JSON object", "type": "type_error"}])
    errors: list[dict] = []
    columns = []
    given = {k for p in products for k in p}
    # The model's nutrients, then any other nutrient given: checked as predict checks one product (unused, but
    # an impossible value is refused all the same).
    for field in [*predictor.features, *(f for f in NUTRIENTS if f in given and f not in predictor.features)]:
        raw = [p.get(field) for p in products]
        # Types first: numpy would take a column of one-element lists as a 2-D array, and "1" or true as numbers.
        # One set of the column's types is cheap; the culprit is looked for only when there is one.
        index = None
        if not {type(v) for v in raw} <= _NUMBER_TYPES:
            index = next(i for i, v in enumerate(raw) if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))))
        if index is None:
            try:
                column = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
            except OverflowError:  # an integer beyond any float
                index = next(i for i, v in enumerate(raw) if isinstance(v, int) and abs(v) > 1e308)
        if index is not None:
            errors.append(_field_error(field, f"must be a number, got {repr(raw[index])[:80]}", ["products", index]))
            continue
        bad = np.flatnonzero(invalid_mask(field, column))
        errors += [_field_error(field, value_problem(field, float(column[i])) or "invalid", ["products", int(i)]) for i in bad[:20]]
        if field not in predictor.features:
            continue
        if not allow_missing and field in REQUIRED_FEATURES:
            errors += [_field_error(field, "missing", ["products", int(i)]) for i in np.flatnonzero(np.isnan(column))[:20]]
        columns.append(column)
    bad_names = [i for i, p in enumerate(products) if p.get(NAME) is not None and not isinstance(p.get(NAME), str)]
    errors += [_field_error(NAME, f"must be a string, got {repr(products[i][NAME])[:80]}", ["products", i]) for i in bad_names[:20]]
    unknown = given - set(NUTRIENTS) - {NAME}
    errors += [_field_error(k, f"unknown field; nutrients are {', '.join(NUTRIENTS)}", ["products"]) for k in sorted(unknown)]
    if errors:
        raise _BatchErrors(errors[:100])
    return np.stack(columns, axis=1).astype(np.float32) if columns else np.zeros((len(products), 0), np.float32)
