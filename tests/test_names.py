"""The product's name as a feature: stable hashed n-grams, training (stacked = solo, exact resume), and every
path that must agree with predict (ONNX, explain, serve, export predict), with the bad names a user sends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from foodcls.config import load_config
from foodcls.data import LabelledData, read_labelled_csv, write_labelled_csv
from foodcls.inference.checkpoint import load_checkpoint
from foodcls.inference.predict import load_predictor
from foodcls.text import NameHashing, fold, ngram_ids, ngrams
from tests.conftest import REPO

CLASS_WORDS = {0: ["Sirop de fraise", "Jus d'orange", "Cola", "Eau gazeuse", "Succo di mela", "عصير برتقال"],
               1: ["Jambon cuit", "Saucisson sec", "Poulet rôti", "Prosciutto crudo", "Beef jerky"],
               2: ["Chips salées", "Crackers", "Barre chocolatée", "Biscotti", "Pretzels"],
               3: ["Crème brûlée", "Mousse au chocolat", "Tiramisù", "Yaourt aux fruits", "Ice cream"]}


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO)


def test_the_hash_is_stable_and_names_fold_as_documented():
    hashing = NameHashing()
    # Written down once: the ids of a name may never change between releases (checkpoints store learnt rows).
    assert ngram_ids(["Sirop de fraise"], hashing)[0][:8].tolist() == [6468, 20207, 3176, 19200, 11512, 20386, 12993, 23924]
    assert [text for text, _ in ngrams("Sirop de fraise", hashing)][:7] == ["<s", "si", "ir", "ro", "op", "p>", "<d"]
    assert fold("CRÈME  Brûlée!") == fold("creme brulee") == "creme brulee"
    assert fold("Straße\x00\x07Tee\n") == "strasse tee" and fold("عصير برتقال") == "عصير برتقال"
    ids = ngram_ids(["x" * 100_000, "", None, "\x00\x01", "é"], hashing)
    assert ids.shape == (5, hashing.max_ngrams) and (ids[0] != hashing.pad).all()  # cut, never an error
    assert (ids[1:4] == hashing.pad).all() and (ids[4] != hashing.pad).sum() == 3  # empty bags; "<e", "e>", "<e>"
    assert ngram_ids(["Crème brûlée"], hashing).tolist() == ngram_ids(["creme BRULEE"], hashing).tolist()



def _reference_ids(name: str, hashing: NameHashing) -> list[int]:
    """ngram_ids of one name, written out plainly: FNV-1a over each whole word (tagged) and each n-gram."""
    def fnv(text: str, mix: int) -> int:
        h = 0xCBF29CE484222325 ^ mix
        for c in text:
            h = ((h ^ ord(c)) * 0x100000001B3) % (1 << 64)
        return h % hashing.buckets

    words = [f"\x02{w}\x03" for w in fold(name).split(" ") if w]
    ids = [fnv(w, 0x100) for w in words] if hashing.words else []
    for n in range(hashing.ngram_min, hashing.ngram_max + 1):
        ids += [fnv(w[i : i + n], n) for w in words for i in range(len(w) - n + 1)]
    ids = ids[: hashing.max_ngrams]
    return ids + [hashing.pad] * (hashing.max_ngrams - len(ids))


@given(st.lists(st.text(alphabet=st.sampled_from("ab é-Ωجx"), max_size=40), min_size=1, max_size=6),
       st.booleans(), st.integers(1, 3), st.integers(0, 3), st.integers(1, 40))
def test_ngram_ids_are_the_plain_fnv_of_each_word_and_ngram(names, words, ngram_min, extra, max_ngrams):
    hashing = NameHashing(buckets=997, ngram_min=ngram_min, ngram_max=ngram_min + extra, max_ngrams=max_ngrams, words=words)
    assert ngram_ids(names, hashing).tolist() == [_reference_ids(name, hashing) for name in names]
    assert [bucket for _, bucket in ngrams(names[0], hashing)] == [i for i in _reference_ids(names[0], hashing) if i != hashing.pad]


def test_whole_words_come_first_and_are_shown_in_brackets():
    words = NameHashing(words=True)
    ids = ngram_ids(["Sirop de fraise"], words)[0]
    # Written down once, as above: the words' ids, then the same n-grams as without words.
    assert ids[:3].tolist() == [24303, 819, 32620]
    assert ids[3:11].tolist() == [6468, 20207, 3176, 19200, 11512, 20386, 12993, 23924]
    assert [text for text, _ in ngrams("Sirop de fraise", words)][:5] == ["[sirop]", "[de]", "[fraise]", "<s", "si"]
    assert ngram_ids(["de"], words)[0][0] != ngram_ids(["de"], NameHashing(ngram_min=4))[0][0]  # the word ≠ the 4-gram <de>


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=450))
def test_ascii_names_take_a_quicker_road_to_the_same_words(name):
    from foodcls.text import _words

    assert _words(name) == (fold(name).split(" ") if fold(name) else [])


@given(st.lists(st.one_of(st.none(), st.text(alphabet=st.characters(max_codepoint=127), max_size=220),
                         st.text(alphabet=st.sampled_from("aB é-\x00Ωج_"), max_size=30)), max_size=8))
def test_a_batch_of_names_is_marked_as_each_name_alone(names):
    """The quick road over a batch's short ASCII names (one string for them all) gives each name's own marks:
    separators in names, empty and long names, non-ASCII names mixed in."""
    from foodcls.text import _marked, _marked_all

    assert _marked_all(names) == [_marked(name) for name in names]


def test_bag_means_are_the_mean_of_each_names_rows():
    from foodcls.text import bag_means

    hashing = NameHashing(buckets=50, max_ngrams=12)
    table = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    ids = ngram_ids(["ab", "", "Sirop de fraise", "é", None], hashing)
    expected = [table[[i for i in row if i != hashing.pad]].mean(axis=0) if (row != hashing.pad).any() else np.zeros(3) for row in ids]
    assert np.allclose(bag_means(table, ids, hashing.pad), expected, atol=1e-6)
    assert bag_means(table, ids[:0], hashing.pad).shape == (0, 3)
    many = ngram_ids([f"name {i} " * (i % 7) for i in range(2500)], hashing)  # more rows than a block of bag_means
    expected = [table[[i for i in row if i != hashing.pad]].mean(axis=0) if (row != hashing.pad).any() else np.zeros(3) for row in many]
    assert np.allclose(bag_means(table, many, hashing.pad), expected, atol=1e-6)

@pytest.fixture(scope="module")
def named_dir(tmp_path_factory, demo_dir):
    """The demo set with a name per product (words of its class, a tenth of them with no name at all)."""
    root = tmp_path_factory.mktemp("named")
    for split, seed in (("train", 1), ("test", 2)):
        data = read_labelled_csv(demo_dir / f"{split}.csv")
        rng = np.random.default_rng(seed)
        names = np.array([CLASS_WORDS[label][rng.integers(len(CLASS_WORDS[label]))] if rng.random() > 0.1 else ""
                          for label in data.labels.tolist()], dtype=object)
        write_labelled_csv(root / f"{split}.csv", LabelledData(data.features, data.labels, data.feature_names, "", columns={"name": names}),
                           ("name",))
    return root


def _config(root: Path, path: Path, *overrides: str):
    raw = yaml.safe_load((REPO / "configs" / "mlp.yaml").read_text())
    raw["data"] = {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "val_fraction": 0.2,
                   "features": ["protein", "carbs", "fat", "additives", "name"]}
    raw["model"] = {"hidden": [16], "name": {"buckets": 512, "dim": 4}}
    raw["train"].update({"epochs": 8, "optimizer": "adam", "lr": 0.01, "batch_size": 64, "weight_decay": 0.001})
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, list(overrides))


@pytest.fixture(scope="module")
def named_run(named_dir, tmp_path_factory):
    from foodcls.training.fit import train

    tmp = tmp_path_factory.mktemp("named-run")
    return train(_config(named_dir, tmp / "n.yaml"), runs_root=tmp / "runs", name="named")


def test_a_name_model_learns_from_the_names(named_run, named_dir):
    predictor = load_predictor(named_run.best_checkpoint)
    assert predictor.name is not None and predictor.features == ("protein", "carbs", "fat", "additives")
    meta = load_checkpoint(named_run.best_checkpoint).meta
    assert meta["name"] == {"buckets": 512, "ngram_min": 2, "ngram_max": 4, "max_ngrams": 96, "dim": 4}
    test = read_labelled_csv(named_dir / "test.csv")
    with_names = (predictor.predict(test.features, test.columns["name"]) == test.labels).mean()
    without = (predictor.predict(test.features, None) == test.labels).mean()
    assert with_names > without  # the names carry the class here; the model reads them
    assert named_run.test_accuracy == pytest.approx(with_names)
    card = (named_run.run_dir / "MODEL_CARD.md").read_text()
    assert "Layers 8 → 16 → 4 (2,260 parameters)" in card  # 4 nutrients + the name's 4-vector; the 512 × 4 table counted
    assert "the product's name: hashed character 2–4-grams (512 buckets)" in card


def test_name_runs_stacked_match_solo_and_resume_bit_for_bit(named_dir, tmp_path):
    from foodcls.training.fit import resume, train, train_many

    configs = [_config(named_dir, tmp_path / f"c{i}.yaml", f"train.seed={i}", "data.val_fraction=null") for i in range(2)]
    together = train_many([(c, f"s{i}") for i, c in enumerate(configs)], tmp_path / "together")
    alone = train(configs[1], runs_root=tmp_path / "alone", name="solo")
    a, b = load_checkpoint(together[1].last_checkpoint).arrays, load_checkpoint(alone.last_checkpoint).arrays
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert "name.embedding" in a and "optim.name.exp_avg" in a
    # Four epochs, then resumed to eight: the run ends exactly as one trained for eight at once.
    short = train(_config(named_dir, tmp_path / "short.yaml", "train.seed=1", "data.val_fraction=null", "train.epochs=4"),
                  runs_root=tmp_path / "resumed", name="short")
    resumed = resume(short.run_dir, ["train.epochs=8"])
    c = load_checkpoint(resumed.last_checkpoint).arrays
    assert all(np.array_equal(c[k], b[k]) for k in b)


def test_onnx_explain_serve_and_export_predict_agree_with_predict_on_named_products(named_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from foodcls.inference.explain import integrated_gradients
    from foodcls.inference.export import export
    from foodcls.serve.app import create_app

    predictor = load_predictor(named_run.best_checkpoint)
    rows = np.array([[0.1, 60, 0, 0], [20, 1, 12, 2], [6, 60, 25, 3]], dtype=np.float32)
    names = ["Sirop de fraise", "", "Crème brûlée"]
    expected = predictor.probabilities(rows, names)
    session = ort.InferenceSession(str(export(named_run.best_checkpoint, tmp_path / "m.onnx")))
    got, _ = session.run(None, {"features": rows, "name_ids": ngram_ids(names, predictor.name.hashing).astype(np.int64)})
    assert got == pytest.approx(expected, abs=1e-5)
    explanation = integrated_gradients(predictor, rows[0].astype(np.float64), name=names[0])
    total = explanation.contributions.sum() + explanation.name
    assert total == pytest.approx(explanation.probability - explanation.baseline_probability, abs=2e-3)
    assert explanation.ngrams and all(isinstance(t, str) for t, _ in explanation.ngrams)
    client = TestClient(create_app(named_run.best_checkpoint), base_url="http://127.0.0.1")
    answer = client.post("/predict", json={"protein": 0.1, "carbs": 60, "fat": 0, "additives": 0, "name": names[0], "explain": True}).json()
    assert list(answer["probabilities"].values()) == pytest.approx(expected[0].tolist(), abs=1e-6)
    assert answer["contributions"]["name"] == pytest.approx(explanation.name, abs=1e-9) and answer["name_ngrams"]
    assert client.post("/predict", json={"protein": 1, "carbs": 1, "fat": 1, "additives": 0, "name": 5}).status_code == 422
    assert client.get("/model").json()["name"]["dim"] == 4
    cli = run_cli("predict", "--checkpoint", named_run.run_dir, "--protein", 0.1, "--carbs", 60, "--fat", 0, "--additives", 0,
                  "--name", names[0], "--json")
    assert json.loads(cli.stdout)["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-7)
    # An export: the product_name column is the name the model reads.
    export_file = tmp_path / "export.tsv"
    export_file.write_text("code\tproduct_name\tcategories_tags\tproteins_100g\tcarbohydrates_100g\tfat_100g\tadditives_n\n"
                           "1\tSirop de fraise\t\t0.1\t60\t0\t0\n2\t\ten:x\t20\t1\t12\t2\n")
    out = tmp_path / "out.csv"
    assert run_cli("predict", "--checkpoint", named_run.run_dir, "--input", export_file, "--output", out).returncode == 0
    import csv

    written = list(csv.DictReader(out.open()))
    assert [float(written[0][f"p_{c}"]) for c in predictor.classes] == pytest.approx(expected[0].tolist(), abs=1e-6)
    assert [float(written[1][f"p_{c}"]) for c in predictor.classes] == pytest.approx(expected[1].tolist(), abs=1e-6)


def test_a_model_reading_whole_words_stores_it_and_onnx_and_explain_agree(named_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from foodcls.inference.explain import integrated_gradients
    from foodcls.inference.export import export
    from foodcls.training.fit import train

    run = train(_config(named_dir, tmp_path / "w.yaml", "model.name.words=true", "train.epochs=3"), runs_root=tmp_path / "runs", name="words")
    assert load_checkpoint(run.best_checkpoint).meta["name"]["words"] is True
    predictor = load_predictor(run.best_checkpoint)
    assert predictor.name.hashing.words
    rows, names = np.array([[0.1, 60, 0, 0], [20, 1, 12, 2]], dtype=np.float32), ["Sirop de fraise", "Jambon cuit"]
    session = ort.InferenceSession(str(export(run.best_checkpoint, tmp_path / "w.onnx")))
    got, _ = session.run(None, {"features": rows, "name_ids": ngram_ids(names, predictor.name.hashing).astype(np.int64)})
    assert got == pytest.approx(predictor.probabilities(rows, names), abs=1e-5)
    assert json.loads(session.get_modelmeta().custom_metadata_map["name"])["words"] is True
    explanation = integrated_gradients(predictor, rows[0].astype(np.float64), name=names[0])
    shown = [text for text, _ in ngrams(names[0], predictor.name.hashing)]
    assert {text for text, _ in explanation.ngrams} <= set(shown) and shown[:3] == ["[sirop]", "[de]", "[fraise]"]
    # The same run read as if its words were not hashed gives other answers: the ids differ, the model reads them.
    plain = ngram_ids(names, NameHashing(**{**predictor.name.hashing.to_json(), "words": False}))
    assert not np.array_equal(plain, ngram_ids(names, predictor.name.hashing))


def test_nameless_members_read_the_nutrients_alone(named_dir, tmp_path):
    from foodcls.training.fit import train

    run = train(_config(named_dir, tmp_path / "e.yaml", "model.ensemble=3", "model.nameless_members=1", "train.epochs=3"),
                runs_root=tmp_path / "runs", name="mixed")
    tables = load_checkpoint(run.best_checkpoint).arrays["name.embedding"]
    assert tables.shape[0] == 3 and not tables[2].any() and tables[0].any() and tables[1].any()  # the last member: zeros
    member = load_predictor(run.run_dir / "members" / "m3")
    rows = np.array([[0.1, 60, 0, 0], [20, 1, 12, 2]], dtype=np.float32)
    assert np.array_equal(member.probabilities(rows, ["Sirop de fraise", "Jambon"]), member.probabilities(rows, None))
    named = load_predictor(run.run_dir / "members" / "m1")
    assert not np.allclose(named.probabilities(rows, ["Sirop de fraise", "Jambon"]), named.probabilities(rows, None))
    assert "the last 1 reading the nutrients alone" in (run.run_dir / "MODEL_CARD.md").read_text()
    refused = run_cli("train", "--config", tmp_path / "e.yaml", "--set", "model.nameless_members=3")
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1 and "model.nameless_members: 3 must be under model.ensemble" in refused.stderr


def test_bad_names_are_handled_never_a_traceback(named_run, tmp_path):
    for name in ("x" * 100_000, "\x01\x1b[31mred\x07", ""):  # (a NUL cannot be an argument: serve gets one below)
        result = run_cli("predict", "--checkpoint", named_run.run_dir, "--protein", 1, "--carbs", 50, "--fat", 1, "--additives", 0,
                         "--name", name, "--json")
        assert result.returncode == 0, result.stderr
        assert abs(sum(json.loads(result.stdout)["probabilities"].values()) - 1) < 1e-6
    from fastapi.testclient import TestClient

    from foodcls.serve.app import create_app

    client = TestClient(create_app(named_run.best_checkpoint), base_url="http://127.0.0.1")
    answer = client.post("/predict", json={"protein": 1, "carbs": 50, "fat": 1, "additives": 0, "name": "\x00" + "y" * 100_000})
    assert answer.status_code == 200, answer.text
    broken = tmp_path / "broken.tsv"  # a name that is not UTF-8 (a latin-1 byte in a UTF-8 export)
    broken.write_bytes(b"code\tproduct_name\tproteins_100g\tcarbohydrates_100g\tfat_100g\tadditives_n\tcategories_tags\n"
                       b"1\tCr\xe8me br\xfbl\xe9e\t3\t25\t10\t1\t\n")
    out = tmp_path / "out.csv"
    result = run_cli("predict", "--checkpoint", named_run.run_dir, "--input", broken, "--output", out)
    assert result.returncode == 0, result.stderr
    assert out.read_text().count("\n") == 2


def test_a_name_config_on_data_without_names_is_one_line_naming_the_file(config_file, demo_dir, tmp_path):
    result = run_cli("train", "--config", config_file, "--runs-root", tmp_path / "runs",
                     "--set", "data.features=[protein,carbs,fat,additives,name]")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {demo_dir / 'train.csv'}: no 'name' column, and data.features asks for the product's "
                                     "name (`foodcls data build` writes it; the demo and synthetic sets have none)")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_ragged_stack_of_name_runs_matches_each_run_alone(named_dir, tmp_path):
    """Runs with fewer rows finish their epoch first: the others step on alone, the name tables kept whole (only
    the stepping runs' rows move, with their own learning rate and weight decay). Each run ends as trained
    alone, to float rounding (a padded last batch sums in another order: test_train says so for nutrients)."""
    from foodcls.training.fit import train, train_many

    data = read_labelled_csv(named_dir / "train.csv")
    configs = []
    # The longest run last: the runs still stepping are then not the first ones (their places in the subset differ).
    for i, (share, setting) in enumerate(((0.3, "train.weight_decay=0.01"), (0.6, "train.lr=0.02"), (1.0, "train.lr=0.01"))):
        keep = np.arange(int(len(data.labels) * share))
        path = tmp_path / f"train{i}.csv"
        write_labelled_csv(path, LabelledData(data.features[keep], data.labels[keep], data.feature_names, "",
                                              columns={"name": data.columns["name"][keep]}), ("name",))
        configs.append(_config(named_dir, tmp_path / f"r{i}.yaml", f"data.train={path}", f"train.seed={i}", setting, "train.epochs=3"))
    stacked = train_many([(c, f"r{i}") for i, c in enumerate(configs)], tmp_path / "stacked")
    for i, config in enumerate(configs):
        alone = train(config, runs_root=tmp_path / f"alone{i}", name="solo")
        a, b = load_checkpoint(stacked[i].last_checkpoint).arrays, load_checkpoint(alone.last_checkpoint).arrays
        assert set(a) == set(b)
        for key in ("name.embedding", "net.0.weight", "optim.name.exp_avg", "optim.name.exp_avg_sq"):
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=f"run {i}: {key}")


def test_name_dropout_and_nameless_files(named_dir, demo_dir, tmp_path):
    """A synthetic mix without names trains a name model (declared nameless, each row an empty bag); name
    dropout empties some names each epoch, reproducibly, stacked as solo and across a resume."""
    from foodcls.experiments.folds import assign_folds, plan_folds
    from foodcls.training.fit import resume, train, train_many

    mix = [{"path": str(named_dir / "train.csv")}, {"path": str(demo_dir / "train.csv"), "train_only": True, "nameless": True}]
    configs = [_config(named_dir, tmp_path / f"d{i}.yaml", f"data.train={json.dumps(mix)}", "data.val_fraction=null",
                       f"train.name_dropout={rate}", "train.epochs=4") for i, rate in enumerate((0.0, 0.3))]
    plain, dropped = train_many([(c, f"r{i}") for i, c in enumerate(configs)], tmp_path / "runs")
    a, b = load_checkpoint(plain.last_checkpoint).arrays, load_checkpoint(dropped.last_checkpoint).arrays
    assert not np.array_equal(a["name.embedding"], b["name.embedding"])  # the dropout changed what was learnt
    alone = train(configs[1], runs_root=tmp_path / "alone", name="solo")
    assert all(np.array_equal(b[k], v) for k, v in load_checkpoint(alone.last_checkpoint).arrays.items())
    short = train(configs[1].model_copy(update={"train": configs[1].train.model_copy(update={"epochs": 2})}),
                  runs_root=tmp_path / "short", name="short")
    resumed = load_checkpoint(resume(short.run_dir, ["train.epochs=4"]).last_checkpoint).arrays
    assert all(np.array_equal(b[k], v) for k, v in resumed.items())
    # cv keeps the nameless mark of a train-only file in every fold's config.
    cv_config = _config(named_dir, tmp_path / "cv.yaml", f"data.train={json.dumps(mix)}", "data.val_fraction=null")
    fold = plan_folds(cv_config, assign_folds(cv_config, 2, None), tmp_path / "cv")[0]
    assert [f.nameless for f in fold.config.data.train_files] == [False, True]
    # Without the mark the file is refused; name_dropout without names is a config error.
    unmarked = [mix[0], {"path": str(demo_dir / "train.csv"), "train_only": True}]
    result = run_cli("train", "--config", tmp_path / "d0.yaml", "--runs-root", tmp_path / "r2", "--set", f"data.train={json.dumps(unmarked)}")
    assert result.returncode == 1 and "no 'name' column" in result.stderr
    result = run_cli("train", "--config", tmp_path / "d0.yaml", "--runs-root", tmp_path / "r3",
                     "--set", "data.features=[protein,carbs,fat,additives]", "--set", "train.name_dropout=0.2")
    assert result.returncode == 1 and "train.name_dropout: 0.2 without `name` in data.features" in result.stderr
