"""``napari-difftt stn-bench`` end to end on tiny synthetic IDX files (a few seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_difftt import cli
from napari_difftt.core.classification.digits import write_idx


@pytest.fixture
def digits_folder(tmp_path):
    """48 training and 20 test 28×28 'digits': a bright bar whose position is the class (0 … 9)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "digits"
    folder.mkdir()
    for prefix, count in (("train", 48), ("t10k", 20)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = rng.integers(0, 30, size=(count, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels, strict=True):
            image[4 + 2 * label:6 + 2 * label, 6:22] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def test_stn_bench_smoke_run_writes_table_and_json(digits_folder, tmp_path, capsys):
    out = tmp_path / "results.json"
    status = cli.main([
        "stn-bench", "--data", str(digits_folder), "--epochs", "1", "--repeats", "2",
        "--subset", "40", "--models", "cnn", "tps2", "diffeo-reg",
        "--json", str(out), "--device", "cpu", "--batch-size", "16",
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "40 training / 20 test images" in printed
    assert printed.count("epoch 1/1:") == 6  # per-epoch progress: 3 models × 2 runs
    assert "| TPS-STN 2×2 | 54,098 (+26,998) |" in printed

    report = json.loads(out.read_text())
    assert report["protocol"]["train_images"] == 40 and report["protocol"]["epochs"] == 1
    rows = {row["model"]: row for row in report["results"]}
    assert list(rows) == ["cnn", "tps2", "diffeo-reg"]
    assert rows["cnn"]["parameters"] == 27_100 and rows["cnn"]["folding_mean"] is None
    assert rows["tps2"]["transformer_parameters"] == 26_998
    for row in rows.values():
        accuracies = [run["accuracy"] for run in row["runs"]]
        assert len(accuracies) == 2 and all(0 <= a <= 100 for a in accuracies)
        assert row["accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert row["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    for name in ("tps2", "diffeo-reg"):
        assert 0 <= rows[name]["folding_mean"] <= 100
        assert 0 <= rows[name]["folding_digital_mean"] <= 100


def test_stn_bench_errors_name_the_problem(tmp_path, digits_folder, capsys):
    assert cli.main(["stn-bench", "--data", str(tmp_path / "missing")]) == 2
    assert f"data folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert cli.main(["stn-bench", "--data", str(digits_folder), "--models", "cnn", "resnet"]) == 2
    assert "unknown model(s) resnet; choose from cnn, tps2" in capsys.readouterr().err
    bad = tmp_path / "nowhere" / "results.json"
    assert cli.main(["stn-bench", "--data", str(digits_folder), "--json", str(bad)]) == 2
    assert f"cannot write {bad}" in capsys.readouterr().err


def test_table_shows_spread_only_with_repeats():
    from napari_difftt.commands.stn_bench import format_table

    row = {"label": "CNN", "parameters": 27_100, "transformer_parameters": 0,
           "accuracy_mean": 65.158, "accuracy_std": None, "folding_mean": None,
           "folding_std": None, "train_seconds": 54.2}
    repeated = {**row, "label": "Diffeomorphic STN", "transformer_parameters": 29_140,
                "parameters": 56_240, "accuracy_std": 0.4, "folding_mean": 0.0, "folding_std": 0.0}
    lines = format_table([row, repeated]).splitlines()
    assert lines[2] == "| CNN | 27,100 | 65.16 | — | 54 |"
    assert lines[3] == ("| Diffeomorphic STN | 56,240 (+29,140) | 65.16 ± 0.40 | 0.000 ± 0.000 "
                        "| 54 |")


def test_labels_outside_0_to_9_are_refused_with_the_values_found(digits_folder, capsys):
    """Label values of 200 are refused with a message, not turned into a 201-class model."""
    labels = (np.arange(48) % 10).astype(np.uint8)
    labels[[3, 7]] = 200
    labels[5] = 10
    write_idx(digits_folder / "train-labels-idx1-ubyte", labels)
    assert cli.main(["stn-bench", "--data", str(digits_folder), "--models", "cnn"]) == 2
    message = capsys.readouterr().err
    assert "train-labels-idx1-ubyte holds label values outside 0..9: 10, 200 (3 of 48" in message


def test_json_that_is_a_folder_is_refused_before_training(digits_folder, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert cli.main(["stn-bench", "--data", str(digits_folder), "--json", str(folder)]) == 2
    assert f"--json {folder} is a folder" in capsys.readouterr().err
