"""`foodcls serve` for real: a uvicorn subprocess on 127.0.0.1, spoken to over HTTP; its page in headless
Chromium; `export` checked with onnxruntime; `--explain` checked for completeness."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from foodcls.data import read_labelled_csv
from foodcls.inference.predict import load_predictor
from tests.conftest import REPO

httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_run):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "foodcls", "serve", "--checkpoint", str(trained_run.best_checkpoint),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"the server did not start: {process.stderr.read()}")
    yield base
    process.terminate()
    process.wait(timeout=10)


def cli_json(*args):
    result = subprocess.run([sys.executable, "-m", "foodcls", *map(str, args), "--json"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_predict_answers_the_same_numbers_as_the_cli(server, trained_run):
    product = {"protein": 20, "carbs": 1, "fat": 12, "additives": 2}
    answer = httpx.post(server + "/predict", json=product).json()
    expected = cli_json("predict", "--checkpoint", trained_run.best_checkpoint, *[f"--{k}={v}" for k, v in product.items()])
    assert answer == expected


def test_health_model_and_batch(server, trained_run):
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    model = httpx.get(server + "/model").json()
    assert model["classes"] == ["beverages", "meats", "snacks", "desserts"] and model["features"] == ["protein", "carbs", "fat", "additives"]
    assert model["sha256"] == __import__("hashlib").sha256(trained_run.best_checkpoint.read_bytes()).hexdigest()
    assert model["config"]["train"]["epochs"] == 30 and "train_loss" in model["metrics"]
    products = [{"protein": 20, "carbs": 1, "fat": 12, "additives": 2}, {"protein": 3.5, "carbs": 14, "fat": 3, "additives": 1}] * 50
    predictions = httpx.post(server + "/predict/batch", json={"products": products}).json()["predictions"]
    probabilities = load_predictor(trained_run.best_checkpoint).probabilities([[20, 1, 12, 2], [3.5, 14, 3, 1]])
    assert len(predictions) == 100
    for got, want in zip(predictions[:2], probabilities):
        assert list(got["probabilities"].values()) == pytest.approx(want.tolist(), abs=1e-6)


@pytest.mark.parametrize(("body", "status", "fields"), [
    ({"protein": 200, "carbs": 1, "fat": 1, "additives": 0}, 422, ["protein"]),
    ({"protein": -1, "carbs": "x", "fat": 1, "additives": 1.5}, 422, ["protein", "carbs", "additives"]),
    ({"protein": 1, "carbs": 1}, 422, ["fat", "additives"]),
    ({"protein": 1, "carbs": 1, "fat": 1, "additives": 0, "vitamins": 3}, 422, ["vitamins"]),
    ([1, 2, 3], 422, []),
])
def test_bad_values_are_422s_naming_each_bad_field(server, body, status, fields):
    response = httpx.post(server + "/predict", json=body)
    assert response.status_code == status
    named = [d["loc"][-1] for d in response.json()["detail"]]
    assert all(f in named for f in fields)


def test_malformed_huge_and_oversized_bodies_are_never_500(server):
    assert httpx.post(server + "/predict", content=b"{not json").status_code == 400
    assert httpx.post(server + "/predict/batch", json={"products": "no"}).status_code == 422
    assert httpx.post(server + "/predict/batch", json={"products": [{"protein": 1}] * 10_001}).status_code == 422
    assert httpx.post(server + "/predict/batch", json={"products": [{"protein": 1, "carbs": 1, "fat": 1, "additives": "z"}]}).status_code == 422
    assert httpx.post(server + "/predict", content=b"x" * (5 * 1024 * 1024 + 1)).status_code == 413
    # Streamed without a length: stopped once it passes the limit.
    chunks = (b"x" * 65536 for _ in range(100))
    assert httpx.post(server + "/predict", content=chunks).status_code == 413
    assert httpx.get(server + "/docs").status_code == 404  # no page that would fetch scripts from a CDN


@pytest.mark.parametrize("value", [[1], [1, 2], {"g": 1}, "1", True])
def test_a_batch_field_of_the_wrong_type_is_a_422_naming_it(server, value):
    for first in ({"protein": 1, "carbs": 1, "fat": 1, "additives": 0}, {"protein": value, "carbs": 1, "fat": 1, "additives": 0}):
        products = [first, {"protein": value, "carbs": 1, "fat": 1, "additives": 0}]
        response = httpx.post(server + "/predict/batch", json={"products": products})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][:3] == ["body", "products", 0 if first["protein"] is value else 1]
        assert response.json()["detail"][0]["loc"][3] == "protein"


def _json_values():
    from hypothesis import strategies as st

    fields = st.sampled_from(["protein", "carbs", "fat", "additives", "sugars", "energy", "explain", "allow_missing", "x"])
    scalars = st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30) | st.floats() | st.text(max_size=5)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(fields, inner, max_size=5),
                        max_leaves=12)


def test_no_body_makes_either_endpoint_answer_500(server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = _json_values()
    product = st.dictionaries(st.sampled_from(["protein", "carbs", "fat", "additives", "salt", "x"]), values, max_size=6)
    bodies = values | product | st.fixed_dictionaries({"products": st.lists(product, max_size=4) | values})

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies, endpoint=st.sampled_from(["/predict", "/predict/batch"]))
    def check(body, endpoint):
        response = httpx.post(server + endpoint, content=json.dumps(body, allow_nan=True).encode(),
                              headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code in (200, 400, 422), (endpoint, body, response.status_code, response.text[:300])

    check()


def test_the_page_is_served_whole_with_nothing_from_outside(server):
    page = httpx.get(server + "/").text
    assert "<form" in page and "/predict" in page
    assert "http://" not in page and "https://" not in page


def test_model_hides_paths_unless_asked_and_foreign_host_headers_are_refused(server, trained_run):
    from fastapi.testclient import TestClient

    from foodcls.serve.app import create_app

    model = httpx.get(server + "/model").json()
    assert model["checkpoint"] == "best.safetensors" and str(trained_run.run_dir) not in json.dumps(model)
    shown = model["config"]["data"]["train"]
    assert shown.endswith("/train.csv") and shown.count("/") == 1  # the file and its folder, never the full path
    assert httpx.get(server + "/health", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding
    assert httpx.get(server + "/health", headers={"host": "localhost:8000"}).status_code == 200
    exposed = TestClient(create_app(trained_run.best_checkpoint, expose_paths=True), base_url="http://127.0.0.1").get("/model").json()
    assert exposed["checkpoint"] == str(trained_run.best_checkpoint.resolve()) and exposed["config"]["data"]["train"].startswith("/")


def test_serve_does_not_import_torch(trained_run):
    code = ("import sys; from fastapi.testclient import TestClient; from foodcls.serve.app import create_app; "
            f"c = TestClient(create_app({str(trained_run.best_checkpoint)!r}), base_url='http://127.0.0.1'); "
            "r = c.post('/predict', json={'protein': 1, 'carbs': 2, 'fat': 3, 'additives': 0, 'explain': True}); "
            "assert r.status_code == 200, r.text; assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install -y chromium; .ci/run does)")
def test_the_page_in_a_real_browser_shows_the_class_and_a_bar_per_class(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(server + "/", timeout=15_000)
            for name, value in {"protein": "20", "carbs": "1", "fat": "12", "additives": "2"}.items():
                page.fill(f"#{name}", value)
            page.click("#predict")
            page.wait_for_selector("[data-testid=class]:not(:empty)", timeout=15_000)
            assert page.inner_text("[data-testid=class]") == httpx.post(server + "/predict", json={
                "protein": 20, "carbs": 1, "fat": 12, "additives": 2}).json()["class"]
            assert page.locator("#bars .row").count() == 4
            assert page.locator("#contributions .row").count() == 4
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("FOODCLS_UPDATE_SCREENSHOT"):
                shutil.copy(shot, REPO / "docs" / "serve.png")
            assert shot.stat().st_size > 5000
        finally:
            browser.close()


def test_onnx_export_matches_the_numpy_predictor_on_the_demo_test_set(trained_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    result = subprocess.run([sys.executable, "-m", "foodcls", "export", "--checkpoint", str(trained_run.best_checkpoint),
                             "--format", "onnx", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"]) == ["beverages", "meats", "snacks", "desserts"]
    assert json.loads(props["features"]) == ["protein", "carbs", "fat", "additives"]
    data = read_labelled_csv(REPO / "data" / "demo" / "test.csv")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probabilities, labels = session.run(["probabilities", "label"], {"features": data.features})
    expected = load_predictor(trained_run.best_checkpoint).probabilities(data.features)
    assert np.abs(probabilities - expected).max() <= 1e-5
    assert np.array_equal(labels, expected.argmax(axis=1))


def test_onnx_export_fills_unknown_values_with_the_medians(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from foodcls.config import load_config
    from foodcls.inference.export import export
    from foodcls.features import ALL_FEATURES
    from foodcls.synth import write_demo_set
    from foodcls.training.fit import train
    from tests.conftest import write_config

    write_demo_set(tmp_path, n_train=200, n_test=40, seed=3, rich=True)
    config = load_config(write_config(tmp_path / "c.yaml", tmp_path), ["data.scaling=standard", "model.activation=tanh",
                                                                       f"data.features={list(ALL_FEATURES)}"])
    checkpoint = train(config, runs_root=tmp_path / "runs", name="rich").best_checkpoint
    rows = np.array([[20, 1, 12, 2, np.nan, 4, np.nan, 0, 190], [3, 14, 3, 1, 12, np.nan, 0.1, np.nan, np.nan]], dtype=np.float32)
    session = ort.InferenceSession(str(export(checkpoint, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"features": rows})[0]
    assert np.abs(got - load_predictor(checkpoint).probabilities(rows)).max() <= 1e-5


def test_export_refuses_bad_requests_in_one_line(trained_run, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "foodcls", "export", *map(str, args)], capture_output=True, text=True, cwd=REPO)

    for args, fragment in [
        (["--checkpoint", trained_run.best_checkpoint, "--format", "tflite", "--out", tmp_path / "m"], "unknown format"),
        (["--checkpoint", trained_run.best_checkpoint, "--out", tmp_path], "is a directory"),
        (["--checkpoint", tmp_path / "nope.safetensors", "--out", tmp_path / "m.onnx"], "checkpoint not found"),
        (["--checkpoint", REPO / "README.md", "--out", tmp_path / "m.onnx"], "not a valid foodcls checkpoint"),
        (["--checkpoint", trained_run.best_checkpoint, "--out", "/proc/foodcls/m.onnx"], "cannot write"),
    ]:
        result = run(*args)
        assert result.returncode == 1 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_explanations_add_up_to_the_change_in_probability(trained_run):
    from foodcls.inference.explain import integrated_gradients

    predictor = load_predictor(trained_run.best_checkpoint)
    products = read_labelled_csv(REPO / "data" / "demo" / "test.csv").features[:25]
    for product in products:
        explanation = integrated_gradients(predictor, product.astype(np.float64))
        assert abs(explanation.contributions.sum() - (explanation.probability - explanation.baseline_probability)) <= 1e-3
        assert explanation.probability == pytest.approx(predictor.probabilities(product[None])[0].max(), abs=1e-5)


def test_a_meaty_products_protein_speaks_for_meats(trained_run):
    answer = cli_json("predict", "--checkpoint", trained_run.best_checkpoint, "--protein", 25, "--carbs", 1, "--fat", 10,
                      "--additives", 1, "--explain")
    assert answer["class"] == "meats" and answer["contributions"]["protein"] > 0.1
    assert sum(answer["contributions"].values()) == pytest.approx(
        answer["probabilities"]["meats"] - answer["baseline_probability"], abs=1e-3)


def test_batch_predict_explain_adds_contribution_columns(trained_run, tmp_path):
    batch = tmp_path / "in.csv"
    batch.write_text("name,protein,carbs,fat,additives\nham,20,1,12,2\nyogurt,3.5,14,3,1\n")
    result = subprocess.run([sys.executable, "-m", "foodcls", "predict", "--checkpoint", str(trained_run.best_checkpoint), "--input",
                             str(batch), "--explain"], capture_output=True, text=True, cwd=REPO)
    header = result.stdout.splitlines()[0].split(",")
    assert header[-4:] == ["contrib_protein", "contrib_carbs", "contrib_fat", "contrib_additives"]
    assert len(result.stdout.splitlines()) == 3
