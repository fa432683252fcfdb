"""evaluate prints no metric it cannot trust: bad predictions, options and folders are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_difftt.cli import main
from napari_difftt.core.io import write_nifti
from napari_difftt.core.metrics import evaluate_case

MASK = np.zeros((8, 8, 8), np.uint8)
MASK[2:5, 2:5, 2:5] = 1


@pytest.fixture
def folders(tmp_path):
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    write_nifti(labels / "a.nii.gz", MASK, labels=True)
    write_nifti(pred / "a_seg.nii.gz", MASK, labels=True)
    return pred, labels


def _evaluate(pred, labels, *extra) -> list[str]:
    return ["evaluate", "--pred", str(pred), "--labels", str(labels), "--quiet", *extra]


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_predictions_other_than_0_and_1_are_refused_with_their_values(folders, capsys):
    """Label values 2 and 3 counted as foreground; a probability map was scored as a mask."""
    pred, labels = folders
    several = MASK * 2
    several[0, 0, :2] = 3
    write_nifti(pred / "a_seg.nii.gz", several, labels=True, overwrite=True)
    message = _refused(_evaluate(pred, labels), capsys)
    assert "a_seg.nii.gz holds values other than 0 and 1: 2, 3 (2 in all)" in message
    assert "probability" not in message
    write_nifti(pred / "a_seg.nii.gz", MASK * 0.75, overwrite=True)
    message = _refused(_evaluate(pred, labels), capsys)
    assert "holds values other than 0 and 1: 0.75" in message
    assert "looks like a probability map" in message


@pytest.mark.parametrize("value", ["0", "1"])
def test_ignore_value_0_or_1_is_refused(folders, capsys, value):
    """--ignore-value 1 scored an empty prediction Dice 1.0; 0 ignored the background."""
    pred, labels = folders
    write_nifti(pred / "a_seg.nii.gz", MASK * 0, labels=True, overwrite=True)
    message = _refused(_evaluate(pred, labels, "--ignore-value", value), capsys)
    assert f"--ignore-value must be in 2..255 (0 and 1 are background and foreground), got " \
           f"{value}" in message
    with pytest.raises(ValueError, match="ignore_value must not be"):
        evaluate_case(MASK * 0, MASK, ignore_value=int(value))


def test_the_same_folder_for_pred_and_labels_is_refused(folders, capsys):
    """It scored 1.0: the labels compared with themselves."""
    _, labels = folders
    message = _refused(_evaluate(labels, labels / "." ), capsys)
    assert "--pred and --labels are the same folder" in message


def test_two_files_of_one_case_are_refused(folders, capsys):
    """L.nii and L.nii.gz with different content: one of them was silently dropped."""
    pred, labels = folders
    write_nifti(labels / "a.nii", 1 - MASK, labels=True)
    message = _refused(_evaluate(pred, labels), capsys)
    assert f"--labels: {labels / 'a.nii'} and {labels / 'a.nii.gz'} name the same case" in message
    (labels / "a.nii").unlink()
    write_nifti(pred / "a_seg.nii", MASK, labels=True)
    message = _refused(_evaluate(pred, labels), capsys)
    assert "--pred:" in message and "name the same case" in message


def test_the_json_is_strict_with_null_for_infinite_distances(folders, tmp_path, capsys):
    """An empty prediction's Hausdorff distance was written as the token Infinity."""
    pred, labels = folders
    write_nifti(pred / "a_seg.nii.gz", MASK * 0, labels=True, overwrite=True)
    report = tmp_path / "m.json"
    assert main(_evaluate(pred, labels, "--json", str(report))) == 0
    text = report.read_text()
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in the JSON"))
    assert data["cases"][0]["dice"] == 0.0
    assert data["cases"][0]["hausdorff"] is None and data["summary"]["hausdorff"]["mean"] is None
