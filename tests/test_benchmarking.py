"""Benchmark helpers and the ``napari-difftt bench`` command (tiny sizes only)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from napari_difftt import benchmarking as bm
from napari_difftt.cli import main
from napari_difftt.core.flow import exp, integrate


def test_parse_sizes_accepts_2d_and_3d_and_names_bad_items():
    assert bm.parse_sizes("256x256, 64x64x64") == [(256, 256), (64, 64, 64)]
    with pytest.raises(ValueError, match=r"--sizes: '12' needs 2 or 3 axes"):
        bm.parse_sizes("12")
    with pytest.raises(ValueError, match=r"--sizes: '8xa' is not like"):
        bm.parse_sizes("8xa")


def test_random_velocity_is_smooth_with_the_requested_amplitude():
    v = bm.random_velocity((12, 14, 16), amplitude=2.0, dtype="float64")
    assert v.shape == (1, 3, 12, 14, 16) and v.dtype == torch.float64
    assert float(v.norm(dim=1).max()) == pytest.approx(2.0)
    assert not torch.equal(
        v, bm.random_velocity((12, 14, 16), amplitude=2.0, seed=1, dtype="float64")
    )
    torch.testing.assert_close(v, bm.random_velocity((12, 14, 16), amplitude=2.0, dtype="float64"))


def test_cases_compute_what_they_time():
    v = bm.random_velocity((10, 12), dtype="float64")
    torch.testing.assert_close(bm.CASES["ours exp"](v, 5, False)(), exp(v, 5))
    grad = bm.CASES["ours exp"](v, 5, True)()
    assert grad.shape == v.shape and float(grad.abs().sum()) > 0
    steps = torch.arange(1, 5, dtype=v.dtype).view(1, 4, 1, 1, 1) / 4 * v.unsqueeze(1)
    expected = integrate(steps, method="compose", squarings=5).displacement
    torch.testing.assert_close(bm.CASES["ours integrate compose T=4"](v, 5, False)(), expected)
    assert bm.CASES["ours integrate bch T=4"](v, 5, True)().shape == (1, 4, *v.shape[1:])


def test_measure_times_every_repeat_and_reports_memory():
    calls = []
    measured = bm.measure(lambda: calls.append(torch.ones(2**20)), repeats=3, device="cpu")
    assert len(calls) == 4 and len(measured.times) == 3  # one untimed call measures memory
    assert all(time > 0 for time in measured.times) and min(measured.times) <= measured.median
    assert isinstance(measured.peak_bytes, int)  # in-process memory: see the isolated test


def test_run_isolated_runs_a_case_in_a_fresh_process():
    spec = {
        "case": "ours exp",
        "shape": [512, 512],
        "squarings": 3,
        "backward": False,
        "device": "cpu",
        "threads": 1,
        "repeats": 2,
    }
    measured = bm.run_isolated([sys.executable, "-m", "napari_difftt.benchmarking"], spec)
    assert len(measured.times) == 2
    # exp holds at least the output and one composed field (2 × 2 MiB float32) besides its
    # input, and nowhere near a hundred fields
    field_bytes = 2 * 512 * 512 * 4
    assert 2 * field_bytes <= measured.peak_bytes <= 100 * field_bytes
    spec["shape"] = [6, 7]
    failing = [sys.executable, "-c", "import sys; sys.exit('no such case')"]
    with pytest.raises(RuntimeError, match=r"case 'ours exp' at \[6, 7\] failed:\nno such case"):
        bm.run_isolated(failing, spec)


def test_format_table_is_markdown():
    table = bm.format_table(["a", "b"], [["1", "2"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert bm.format_bytes(3 * 2**20) == "3.0 MiB"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes", "9"], "--sizes: '9' needs 2 or 3 axes"),
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--squarings", "21"], "squarings must be in 0..20, got 21"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
    ],
)
def test_bench_command_rejects_bad_arguments(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_pooled_inference_runs_take_the_median_of_every_repeat(tmp_path, capsys, monkeypatch):
    """benchmarks/pool_inference.py: the medians are over all repeats of all runs (not the
    median of the runs' medians), divided by the same-width U-Net's in the same mode."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "pool_inference.py"
    spec = importlib.util.spec_from_file_location("pool_inference", script)
    pool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pool)

    def run(bch, unet):
        return {"runs": [
            {"model": "bch (bundled)", "width": 4, "size": 128, "mode": "segmentation",
             "seconds": bch, "median": 0},
            {"model": "unet width 4", "width": 4, "size": 128, "mode": "segmentation",
             "seconds": unet, "median": 0},
            {"size": 128, "fold_tests": {}},
        ]}

    first, second = tmp_path / "1.json", tmp_path / "2.json"
    first.write_text(json.dumps(run([1.0, 1.1, 5.0], [1.0, 1.0, 1.0])))
    second.write_text(json.dumps(run([1.2, 1.3], [0.5, 0.5])))
    pools, widths = pool.pooled_seconds([first, second], 128)
    assert sorted(pools["bch (bundled)", "segmentation"]) == [1.0, 1.1, 1.2, 1.3, 5.0]
    assert widths == {"bch (bundled)": 4, "unet width 4": 4}
    monkeypatch.setattr(sys, "argv", ["pool_inference.py", str(first), str(second)])
    pool.main()
    # pooled medians 1.2 s and 1.0 s (the runs' own ratios would be 1.1 × and 2.5 ×)
    assert "| bch (bundled) | 1.200 s (1.200 ×), n 5 |" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["pool_inference.py", str(first), "--size", "64"])
    with pytest.raises(SystemExit):
        pool.main()
    assert "no timings at 64³" in capsys.readouterr().err
