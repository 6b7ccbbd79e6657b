import numpy as np

from foodcls.data import read_labelled_csv
from foodcls.synth import NO_ADDITIVE_SHARE, generate, write_demo_set
from foodcls.labels import CLASSES


def test_demo_set_is_balanced_valid_and_seeded(tmp_path):
    features, labels = generate(4000, np.random.default_rng(5))
    assert np.bincount(labels).tolist() == [1000] * 4
    assert (features >= 0).all() and (features[:, :3] <= 100).all()
    assert (features[:, :3].sum(axis=1) <= 100 + 1e-3).all()
    assert np.array_equal(features[:, 3], np.round(features[:, 3]))
    again, _ = generate(4000, np.random.default_rng(5))
    assert np.array_equal(features, again)


def test_no_additive_shares_follow_the_real_data():
    features, labels = generate(20000, np.random.default_rng(1))
    for index, name in enumerate(CLASSES):
        share = (features[labels == index, 3] == 0).mean()
        assert abs(share - NO_ADDITIVE_SHARE[name]) < 0.1, (name, share)


def test_written_files_round_trip(tmp_path):
    paths = write_demo_set(tmp_path, n_train=40, n_test=20, seed=2)
    train = read_labelled_csv(paths["train"])
    assert len(train) == 40 and len(read_labelled_csv(paths["test"])) == 20


def test_shipped_demo_set_is_the_generator_output(tmp_path):
    from tests.conftest import REPO
    from foodcls.synth import DEFAULT_SEED

    write_demo_set(tmp_path, seed=DEFAULT_SEED)
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.csv").read_bytes() == (REPO / "data" / "demo" / f"{split}.csv").read_bytes()


def test_shipped_rich_demo_set_is_the_generator_output_and_extends_the_four_feature_set(tmp_path):
    import csv

    from tests.conftest import REPO
    from foodcls.features import ALL_FEATURES
    from foodcls.synth import DEFAULT_SEED

    write_demo_set(tmp_path, seed=DEFAULT_SEED, rich=True)
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.csv").read_bytes() == (REPO / "data" / "demo-rich" / f"{split}.csv").read_bytes()
        rich = list(csv.reader((tmp_path / f"{split}.csv").read_text().splitlines()))
        seed = list(csv.reader((REPO / "data" / "demo" / f"{split}.csv").read_text().splitlines()))
        assert [row[:5] for row in rich[1:]] == seed[1:]
    data = read_labelled_csv(tmp_path / "train.csv", ALL_FEATURES)
    f = {name: data.features[:, i] for i, name in enumerate(ALL_FEATURES)}
    assert (f["sugars"] <= f["carbs"]).all() and (f["saturated_fat"] <= f["fat"]).all()
    estimate = 4 * f["protein"] + 4 * f["carbs"] + 9 * f["fat"] + 2 * f["fiber"]
    close = np.abs(f["energy"] - estimate) <= np.maximum(0.1 * estimate, 2)
    assert close.mean() > 0.99


def test_shipped_real_data_synthetic_set_is_the_generator_output_with_the_archetypes_the_demo_lacks(tmp_path):
    from tests.conftest import REPO
    from foodcls.features import ALL_FEATURES
    from foodcls.synth import DEFAULT_SEED

    write_demo_set(tmp_path, seed=DEFAULT_SEED, rich=True, kind="off")
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.csv").read_bytes() == (REPO / "data" / "synth-off" / f"{split}.csv").read_bytes()
    data = read_labelled_csv(tmp_path / "train.csv", ALL_FEATURES)
    f = {name: data.features[:, i] for i, name in enumerate(ALL_FEATURES)}
    assert np.bincount(data.labels).tolist() == [2000] * 4
    assert (f["sugars"] <= f["carbs"]).all() and (f["saturated_fat"] <= f["fat"]).all()
    fruit_like = (f["protein"] < 1) & (f["carbs"] >= 16) & (f["carbs"] <= 30) & (f["fat"] < 1)
    desserts = data.labels == CLASSES.index("desserts")
    assert 0.05 < fruit_like[desserts].mean() < 0.2  # sorbets and compotes, about a tenth of the desserts
    demo = read_labelled_csv(REPO / "data" / "demo-rich" / "train.csv", ALL_FEATURES)
    d = {name: demo.features[:, i] for i, name in enumerate(ALL_FEATURES)}
    demo_fruit = (d["protein"] < 1) & (d["carbs"] >= 16) & (d["carbs"] <= 30) & (d["fat"] < 1)
    assert demo_fruit[demo.labels == CLASSES.index("desserts")].mean() < 0.02  # what the demo archetypes lack
    # Plain yogurts and skyr: more protein than milk, little carbohydrate, nearly all of it lactose.
    plain = lambda g: (g["protein"] >= 4.5) & (g["carbs"] <= 8) & (g["fat"] <= 8)  # noqa: E731
    assert 0.08 < plain(f)[desserts].mean() < 0.25
    assert plain(d)[demo.labels == CLASSES.index("desserts")].mean() < 0.03
    # Cereal bars, crackers and low-fat biscuits: snacks with 45-72 g carbohydrates and 5-13.5 g fat.
    bars = lambda g: (g["carbs"] >= 45) & (g["carbs"] <= 72) & (g["fat"] >= 5) & (g["fat"] <= 13.5) & (g["protein"] >= 4)  # noqa: E731
    snacks = data.labels == CLASSES.index("snacks")
    assert bars(f)[snacks].mean() > 2 * bars(d)[demo.labels == CLASSES.index("snacks")].mean()
    # Mints labelled 0 g of everything carry several additives; light drinks carry several too.
    zeros = np.all([f[name] == 0 for name in ALL_FEATURES if name != "additives"], axis=0)
    mints = zeros & snacks
    assert 0.03 < mints[snacks].mean() < 0.1 and (f["additives"][mints] >= 1).all()
    beverages = data.labels == CLASSES.index("beverages")
    light = beverages & (f["carbs"] <= 5) & (f["additives"] >= 5)
    demo_light = (demo.labels == CLASSES.index("beverages")) & (d["carbs"] <= 5) & (d["additives"] >= 5)
    assert light.sum() > 2 * demo_light.sum()


def test_unknown_archetype_set_is_a_one_line_error(tmp_path):
    import pytest

    from foodcls.errors import ConfigError

    with pytest.raises(ConfigError, match="--archetypes 'cakes': expected one of demo, off"):
        write_demo_set(tmp_path, n_train=8, n_test=8, kind="cakes")
    assert not list(tmp_path.iterdir())
