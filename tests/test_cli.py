"""CLI: train → predict → evaluate end to end on tiny phantoms, and clear errors for bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

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
    threshold = checkpoint["model"]["threshold"]  # calibrated at the end of training
    assert 0 < threshold < 1 and checkpoint["training"]["config"]["calibrate"] is True
    assert np.array_equal(segmentation.array, (probability.array > threshold).astype(np.uint8))
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
    from napari_difftt.core.metrics import topology_report

    for case in metrics["cases"]:  # the topology of the files predict wrote, recomputed
        seg = read_nifti(out / f"{case['name']}_seg.nii.gz").array
        report = topology_report(seg, np.load(out / f"{case['name']}_displacement.npy"))
        assert (case["components"], case["components_full"]) == (
            report["components"], report["components_full"])
        assert case["folding_digital"] == pytest.approx(report["folding_digital"])
        assert case["folding_central"] == pytest.approx(report["folding_central"])

    # the Export widget's files of earlier versions are read too, with the same figures
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for case in metrics["cases"]:
        name = case["name"]
        seg = read_nifti(out / f"{name}_seg.nii.gz")
        write_nifti(legacy / f"{name}_segmentation.nii.gz", seg.array, like=seg, labels=True)
        displacement = np.load(out / f"{name}_displacement.npy")
        for k, axis in enumerate("zyx"):
            write_nifti(legacy / f"{name}_displacement_{axis}_mm.nii.gz",
                        displacement[k] * seg.spacing[k], like=seg)
    again = tmp_path / "legacy.json"
    assert main(["evaluate", "--pred", str(legacy), "--labels", str(dataset / "labelsTs"),
                 "--json", str(again), "--quiet"]) == 0
    for old, new in zip(json.loads(again.read_text())["cases"], metrics["cases"], strict=True):
        for key in ("dice", "hausdorff", "hd95", "components", "folding_digital"):
            assert old[key] == pytest.approx(new[key], abs=1e-6), key


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
    assert "was trained on 1 × 1 × 1 mm" in capsys.readouterr().err  # 2 mm slices here


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["evaluate", "--help"]]
)
def test_help_renders(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:  # a stray "%" in a HELP breaks argparse
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: napari-difftt" in capsys.readouterr().out


def test_resume_refuses_options_that_contradict_the_checkpoint(dataset, trained, tmp_path, capsys):
    """--resume with --width 16 --lr 5 --patch-size 32 32 32 --pieces 3 --seed 9 that contradict
    the checkpoint is refused, each contradiction listed."""
    out = tmp_path / "more.pt"
    argv = ["train", "--data", str(dataset), "--iterations", "4", "--resume", str(trained),
            "--out", str(out), "--width", "16", "--lr", "5", "--patch-size", "32", "32", "32",
            "--pieces", "3", "--seed", "9", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    message = capsys.readouterr().err
    for listed in ("--width 16 (checkpoint: 4)", "--lr 5.0 (checkpoint: 0.0002)",
                   "--patch-size 32 32 32 (checkpoint: 16 16 16)", "--pieces 3 (checkpoint: 2)",
                   "--seed 9 (checkpoint: 1)"):  # fmt: skip
        assert listed in message, listed
    assert str(trained) in message and not out.exists()


def test_out_that_is_a_folder_fails_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    """`--out EXISTING_FOLDER --overwrite` trained to the end, then raised IsADirectoryError."""
    import napari_difftt.core.data as data

    def no_loading(*args, **kwargs):
        raise AssertionError("data were loaded before --out was checked")

    monkeypatch.setattr(data, "load_nifti_folder", no_loading)
    folder = tmp_path / "runs"
    folder.mkdir()
    argv = ["train", "--data", str(dataset), "--iterations", "1", "--out", str(folder),
            "--overwrite", *TINY]  # fmt: skip
    assert main(argv) == 2
    assert f"--out {folder} is a folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv[argv.index(str(folder))] = str(blocker / "model.pt")
    assert main(argv) == 2
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(("number", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_train_saves_the_last_step_and_exits(dataset, tmp_path, number, status):
    """Ctrl-C without --checkpoint-every exited 130 and wrote nothing: the run was lost."""
    out = tmp_path / "run.pt"
    argv = [sys.executable, "-m", "napari_difftt.cli", "train", "--data", str(dataset),
            "--iterations", "100000", "--out", str(out), *TINY[:-1]]  # fmt: skip
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:  # the progress bar's first report (\r ends a line too)
            if re.search(r" [1-9]\d*/100000 ", line):
                break
        process.send_signal(number)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, err
    step = load_checkpoint(out)["training"]["step"]
    assert step >= 1 and f"checkpoint of step {step} is {out}" in err
    assert signal.Signals(number).name in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # atomic: no temporary left


def _predict(trained, inputs, out, *extra) -> int:
    return main(["predict", "--checkpoint", str(trained), str(inputs), "--out", str(out),
                 "--device", "cpu", "--quiet", *extra])  # fmt: skip


def test_predict_reports_topology_and_warns_naming_the_file(
    dataset, trained, tmp_path, capsys, monkeypatch
):
    """Every prediction states its components and folds; more than one
    component or any digital fold is a warning naming the file."""
    from napari_difftt.core import inference
    from napari_difftt.core.metrics import topology_report

    image = dataset / "imagesTs" / "phantom_002.nii.gz"
    assert _predict(trained, image, tmp_path / "a") == 0
    captured = capsys.readouterr()
    assert "(6-connectivity)" in captured.out and "(26-connectivity)" in captured.out
    assert "% (digital)" in captured.out
    real = inference.predict_volume

    def two_specks(*args, **kwargs):
        prediction = real(*args, **kwargs)
        segmentation = np.zeros_like(prediction.segmentation)
        segmentation[2, 2, 2] = segmentation[3, 3, 3] = 1
        return prediction._replace(
            segmentation=segmentation,
            topology=topology_report(segmentation, prediction.displacement),
        )

    monkeypatch.setattr(inference, "predict_volume", two_specks)
    assert _predict(trained, image, tmp_path / "b") == 0
    err = capsys.readouterr().err
    assert f"warning: {image}: the segmentation's topology differs" in err
    assert "2 components (6-connectivity), not 1" in err


def test_predict_warns_of_a_spacing_far_from_training_and_resamples(
    dataset, trained, tmp_path, capsys
):
    """A 1 mm model on 0.8 × 0.8 × 3 mm voxels ran without a word; --spacing resamples."""
    source = read_nifti(dataset / "imagesTs" / "phantom_002.nii.gz")
    assert _predict(trained, dataset / "imagesTs" / "phantom_002.nii.gz", tmp_path / "a") == 0
    assert "trained on" not in capsys.readouterr().err  # 2 × 1 × 1 mm, as trained
    odd = tmp_path / "odd.nii.gz"
    affine = source.affine.copy()
    affine[:3, :3] = np.diag([3.0, 0.8, 0.8])
    write_nifti(odd, source.array, affine=affine)
    assert _predict(trained, odd, tmp_path / "b") == 0
    assert "3 × 0.8 × 0.8 mm voxels but the model was trained on 2 × 1 × 1 mm" in (
        capsys.readouterr().err
    )
    assert _predict(trained, odd, tmp_path / "c", "--spacing", "1") == 0
    written = read_nifti(tmp_path / "c" / "odd_seg.nii.gz")
    assert written.array.shape == source.array.shape  # back on the input's grid
    assert np.array_equal(written.affine, read_nifti(odd).affine)
    assert _predict(trained, odd, tmp_path / "d", "--spacing", "model") == 2
    assert "isotropic training spacing" in capsys.readouterr().err
    assert _predict(trained, odd, tmp_path / "e", "--spacing", "1", "--jacobian") == 2


def test_evaluate_refuses_references_that_cannot_be_trusted(tmp_path, capsys):
    """evaluate reported Dice 1.0 against all-ignore labels, accepted intensity images as
    labels and did not notice a 3 mm vs 1 mm affine mismatch."""
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    write_nifti(pred / "a_seg.nii.gz", mask, labels=True)
    argv = ["evaluate", "--pred", str(pred), "--labels", str(labels), "--quiet"]

    def evaluate_against(reference, affine=None, *extra) -> str:
        write_nifti(labels / "a.nii.gz", reference, labels=True, affine=affine, overwrite=True)
        assert main([*argv, *extra]) == 2
        return capsys.readouterr().err

    intensities = np.arange(512).reshape(8, 8, 8) % 200
    message = evaluate_against(intensities)
    assert "a.nii.gz holds values other than 0, 1 and 255 (ignore): 2, 3, 4" in message
    message = evaluate_against(np.full((8, 8, 8), 255))
    assert "a.nii.gz has no labelled voxel" in message
    coarse = read_nifti(pred / "a_seg.nii.gz").affine.copy()
    coarse[:3, 0] *= 3.0  # 3 mm slices instead of 1 mm
    message = evaluate_against(mask, coarse)
    assert "a_seg.nii.gz and" in message and "have different affines" in message
    assert " [3. 0. 0. 0.]" in message and " [1. 0. 0. 0.]" in message  # both printed
    report = tmp_path / "m.json"
    assert main([*argv, "--ignore-affine", "--json", str(report)]) == 0
    case = json.loads(report.read_text())["cases"][0]
    assert case["dice"] == 1.0 and case["components"] == case["components_full"] == 1
    assert case["topology"] == {"folding_central": None, "folding_digital": None,
                                "components": 1, "components_full": 1,
                                "connectivity": [6, 26], "holds": True}  # fmt: skip


@pytest.mark.parametrize("how", ["flag", "variable", "neither"])
def test_debug_shows_the_traceback_of_an_unexpected_error(how, tmp_path, capsys, monkeypatch):
    """--debug or NAPARI_DIFFTT_DEBUG=1 print an internal error's traceback; without them one
    line says how to see it."""
    from napari_difftt.commands import predict

    def broken(args):
        raise TypeError("an internal bug")

    monkeypatch.setattr(predict, "run", broken)
    monkeypatch.delenv("NAPARI_DIFFTT_DEBUG", raising=False)
    if how == "variable":
        monkeypatch.setenv("NAPARI_DIFFTT_DEBUG", "1")
    argv = ["predict", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path)]
    assert main(["--debug", *argv] if how == "flag" else argv) == 2
    err = capsys.readouterr().err
    assert "napari-difftt predict: error: an internal bug" in err
    assert ("Traceback (most recent call last)" in err and "in broken" in err) == (how != "neither")
    assert ("--debug predict" in err) == (how == "neither")
