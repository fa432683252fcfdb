"""CLI: train → predict → evaluate end to end on tiny phantoms, and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_difftt.cli import main
from napari_difftt.core.data import write_phantom_dataset
from napari_difftt.core.io import load_checkpoint, read_nifti, write_nifti

SHAPE = (16, 32, 32)
TINY = [
    "--patch-size",
    "16",
    "16",
    "16",
    "--width",
    "4",
    "--pieces",
    "2",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(
        root, n_train=2, n_test=2, shape=SHAPE, seed=0, spacing=(2.0, 1.0, 1.0)
    )


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "bch.pt"
    status = main(
        [
            "train",
            "--data",
            str(dataset),
            "--model",
            "bch",
            "--iterations",
            "2",
            "--seed",
            "1",
            "--prior",
            "mean",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert status == 0
    return out


def test_train_predict_evaluate_end_to_end(dataset, trained, tmp_path, capsys):
    checkpoint = load_checkpoint(trained)
    assert checkpoint["model"]["kind"] == "bch" and checkpoint["training"]["step"] == 2
    assert checkpoint["spacing"] == [2.0, 1.0, 1.0]
    assert checkpoint["training"]["config"]["prior"] == "mean"

    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained),
                str(dataset / "imagesTs"),
                "--out",
                str(out),
                "--probabilities",
                "--jacobian",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "phantom_002_displacement.npy",
        "phantom_002_jacdet.nii.gz",
        "phantom_002_prob.nii.gz",
        "phantom_002_seg.nii.gz",
        "phantom_003_displacement.npy",
        "phantom_003_jacdet.nii.gz",
        "phantom_003_prob.nii.gz",
        "phantom_003_seg.nii.gz",
    ]
    source = read_nifti(dataset / "imagesTs" / "phantom_002.nii.gz")
    segmentation = read_nifti(out / "phantom_002_seg.nii.gz")
    probability = read_nifti(out / "phantom_002_prob.nii.gz")
    assert np.array_equal(segmentation.affine, source.affine)
    assert segmentation.array.shape == SHAPE and set(np.unique(segmentation.array)) <= {0, 1}
    assert np.array_equal(segmentation.array, (probability.array > 0.5).astype(np.uint8))
    assert np.load(out / "phantom_002_displacement.npy").shape == (3, *SHAPE)

    report = tmp_path / "metrics.json"
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(out),
                "--labels",
                str(dataset / "labelsTs"),
                "--json",
                str(report),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "mean ± std" in table and "phantom_003" in table and "%detJ<=0 digital" in table
    metrics = json.loads(report.read_text())
    assert [c["name"] for c in metrics["cases"]] == ["phantom_002", "phantom_003"]
    dices = [c["dice"] for c in metrics["cases"]]
    assert metrics["summary"]["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert metrics["summary"]["dice"]["std"] == pytest.approx(np.std(dices))
    assert all(c["components"] >= 0 and "folding_digital" in c for c in metrics["cases"])


def test_nothing_is_overwritten_without_overwrite(dataset, trained, tmp_path, capsys):
    out = tmp_path / "pred"
    args = [
        "predict",
        "--checkpoint",
        str(trained),
        str(dataset / "imagesTs" / "phantom_002.nii.gz"),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(args) == 0
    before = (out / "phantom_002_seg.nii.gz").read_bytes()
    assert main(args) == 2
    assert "phantom_002_seg.nii.gz exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert (out / "phantom_002_seg.nii.gz").read_bytes() == before  # same input, same output
    status = main(
        ["train", "--data", str(dataset), "--iterations", "1", "--out", str(trained), *TINY]
    )
    assert status == 2 and "pass --overwrite" in capsys.readouterr().err


def test_resume_continues_the_step_count(dataset, trained, tmp_path):
    out = tmp_path / "more.pt"
    assert (
        main(
            [
                "train",
                "--data",
                str(dataset),
                "--model",
                "bch",
                "--iterations",
                "3",
                "--resume",
                str(trained),
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    training = load_checkpoint(out)["training"]
    assert training["step"] == 3 and [h["step"] for h in training["metrics"]["history"]] == [
        1,
        2,
        3,
    ]
    assert training["config"]["prior"] == "mean"  # model settings come from the checkpoint


def test_errors_name_the_file_and_the_problem(dataset, trained, tmp_path, capsys):
    def error(argv) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "m.pt")
    assert "folder not found" in error(
        [
            "train",
            "--images",
            str(tmp_path / "nope"),
            "--labels",
            str(dataset / "labelsTr"),
            "--out",
            out,
            *TINY,
        ]
    )
    assert "nope" in error(["train", "--data", str(tmp_path / "nope"), "--out", out, *TINY])
    wrong = tmp_path / "wrong"
    (wrong / "imagesTr").mkdir(parents=True)
    (wrong / "labelsTr").mkdir()
    write_nifti(wrong / "imagesTr" / "a.nii.gz", np.zeros((16, 16, 16), np.float32))
    write_nifti(wrong / "labelsTr" / "a.nii.gz", np.zeros((16, 16, 8), np.uint8), labels=True)
    message = error(["train", "--data", str(wrong), "--out", out, *TINY])
    assert "a.nii.gz" in message and "shape" in message
    message = error(
        ["train", "--data", str(dataset), "--out", out, *TINY[:-3], "--device", "cuda:3"]
    )
    assert "CUDA was requested" in message
    message = error(
        [
            "train",
            "--data",
            str(dataset),
            "--model",
            "unet",
            "--resume",
            str(trained),
            "--out",
            out,
            *TINY,
        ]
    )
    assert str(trained) in message and "'bch' model" in message
    assert "input not found" in error(
        [
            "predict",
            "--checkpoint",
            str(trained),
            str(tmp_path / "missing.nii.gz"),
            "--out",
            str(tmp_path),
        ]
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    message = error(["evaluate", "--pred", str(empty), "--labels", str(dataset / "labelsTs")])
    assert "holds no prediction" in message and str(empty) in message
    not_a_checkpoint = tmp_path / "junk.pt"
    not_a_checkpoint.write_bytes(b"junk")
    message = error(
        [
            "predict",
            "--checkpoint",
            str(not_a_checkpoint),
            str(dataset / "imagesTs"),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert "junk.pt" in message


def test_predict_defaults_to_the_bundled_model(dataset, tmp_path, capsys):
    from napari_difftt.core.inference import default_checkpoint

    try:
        bundled = default_checkpoint()
    except FileNotFoundError:
        pytest.skip("the bundled checkpoint is not installed")
    assert load_checkpoint(bundled)["model"]["kind"] == "bch"
    image = dataset / "imagesTs" / "phantom_002.nii.gz"
    assert main(["predict", str(image), "--out", str(tmp_path), "--device", "cpu", "--quiet"]) == 0
    assert read_nifti(tmp_path / "phantom_002_seg.nii.gz").array.shape == SHAPE
    assert "was trained on (1.0, 1.0, 1.0) mm" in capsys.readouterr().err  # 2 mm slices here


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["evaluate", "--help"]]
)
def test_help_renders(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:  # a stray "%" in a HELP breaks argparse
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: napari-difftt" in capsys.readouterr().out
