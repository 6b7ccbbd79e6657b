import numpy as np
import pytest

from foodcls.data import read_labelled_csv, stratified_split
from foodcls.feature_table import read_feature_table
from foodcls.preprocessing import fit_scale
from foodcls.errors import DataError


def csv_file(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_rows_without_header_and_class_indices(tmp_path):
    data = read_labelled_csv(csv_file(tmp_path, "1,20,1,12,2\nsnacks,6,60,20,1\n"))
    assert data.labels.tolist() == [1, 2]
    assert data.features.tolist() == [[20, 1, 12, 2], [6, 60, 20, 1]]


def test_reads_rows_after_a_header(tmp_path):
    data = read_labelled_csv(csv_file(tmp_path, "label,protein,carbs,fat,additives\ndesserts,4,15,3,1\n"))
    assert data.labels.tolist() == [3] and len(data) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("meats,20,1,12\n", "expected 5 fields"),
        ("meats,20,one,12,2\n", "carbs is not a number: 'one'"),
        ("meats,20,nan,12,2\n", "carbs must be a finite number"),
        ("meats,20,1,inf,2\n", "fat must be a finite number"),
        ("meats,-1,1,12,2\n", "protein must lie within 0-100 g per 100 g, got -1"),
        ("meats,1e308,1,2,0\n", "protein must lie within 0-100 g per 100 g, got 1e\\+308"),
        ("cakes,20,1,12,2\n", "unknown class 'cakes'"),
        ("7,20,1,12,2\n", "unknown class '7'"),
        ("meats,20,1,12,1.5\n", "additives must be a whole number"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, body, message):
    path = csv_file(tmp_path, "meats,20,1,12,2\n" + body)
    with pytest.raises(DataError, match=rf"^{path}:2: .*{message}"):
        read_labelled_csv(path)


def test_empty_and_missing_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="file is empty"):
        read_labelled_csv(csv_file(tmp_path, "\n"))
    with pytest.raises(DataError, match="file not found"):
        read_labelled_csv(tmp_path / "missing.csv")


def test_scale_is_the_training_maximum_and_never_zero():
    features = np.array([[10, 50, 0, 2], [20, 25, 0, 4]], dtype=np.float32)
    assert fit_scale(features).tolist() == [20, 50, 1, 4]


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = np.repeat(np.arange(4), [100, 60, 40, 20])
    kept, held = stratified_split(labels, 0.25, seed=3)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[held]).tolist() == [25, 15, 10, 5]
    again_kept, again_held = stratified_split(labels, 0.25, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)
    assert not np.array_equal(held, stratified_split(labels, 0.25, seed=4)[1])


def test_feature_table_carries_other_columns(tmp_path):
    table = read_feature_table(csv_file(tmp_path, "name,fat,protein,carbs,additives\nham,12,20,1,2\n"))
    assert table.header == ["name", "fat", "protein", "carbs", "additives"]
    assert table.features.tolist() == [[20, 1, 12, 2]] and table.rows == [["ham", "12", "20", "1", "2"]]


def test_feature_table_reads_the_labelled_format(tmp_path):
    table = read_feature_table(csv_file(tmp_path, "meats,20,1,12,2\n"))
    assert table.header == ["class", "protein", "carbs", "fat", "additives"]
    assert table.features.tolist() == [[20, 1, 12, 2]]
