"""Markdown tables from the JSON files of ``segmentation.py``: ``report.py RESULTS_DIR``.

Prints Tables 2, 3 and 4 (whatever runs exist) to stdout; every number comes from the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from segmentation import TABLE2, TABLE3  # same folder

METRICS = (
    ("dice", "Dice", "{:.3f}"),
    ("hausdorff", "HD (mm)", "{:.2f}"),
    ("hd95", "HD95 (mm)", "{:.2f}"),
    ("folding_central", "% det J ≤ 0 (central)", "{:.4f}"),
    ("folding_digital", "% det J ≤ 0 (digital)", "{:.4f}"),
    ("components", "components", "{:.2f}"),
)
LABELS3 = {
    "fixed": "fixed (μ, Σ, β frozen)",
    "mean": "μ",
    "sigma": "μ, σ² (Σ = s²·Σ₀)",
    "diag": "μ, diagonal Σ",
    "full": "μ, full Σ (Cholesky)",
    "diag_beta": "μ, diagonal Σ, β",
    "full_beta": "μ, full Σ, β",
}


def main(folder: Path) -> None:
    """Tables 2 and 3 for every sweep found (stems ``table2``, ``table2_l0.01``, …)."""
    for tag in _tags(folder):
        suffix = f"_{tag}" if tag else ""
        penalty = ", ".join(_describe(part) for part in tag.split("_")) if tag else "λ = 0"
        table2 = {name: _load(folder / f"table2{suffix}_{name}.json") for name in TABLE2}
        if table2["unet"] is None:  # λ‖∇u‖² does not act on the U-Net: the same run at any λ
            plain = "_".join(part for part in tag.split("_") if not part.startswith("l"))
            table2["unet"] = _load(folder / f"table2{'_' + plain if plain else ''}_unet.json")
        table3 = {name: _load(folder / f"table3{suffix}_{name}.json") for name in TABLE3}
        if table3["diag"] is None:  # the same configuration and seed as Table 2's bch row
            table3["diag"] = table2["bch"]
        table2 = {k: v for k, v in table2.items() if v is not None}  # only what was run
        table3 = {k: v for k, v in table3.items() if v is not None}
        prior = _load(folder / "prior_only.json")
        if table2:
            rows = {"prior": prior, **table2} if prior else table2
            print(f"### Table 2 — models (3D phantoms, {penalty})\n")
            print(
                _table(rows, {"prior": "fitted prior only (no network)", **{k: k for k in TABLE2}})
            )
            print()
        if len(table3) > 1:  # more than the bch row of Table 2
            print(f"### Table 3 — prior parameterisations of the bch model ({penalty})\n")
            print(_table(table3, LABELS3, extra=True))
            print()
    timing = _load(folder / "table4.json")
    if timing is not None:
        print("### Table 4 — whole-volume inference time (CPU)\n")
        print(_timing(timing))


def _tags(folder: Path) -> list[str]:
    """The sweep tags present: '' (defaults), 'l0.01', 'l0.01_it800', …"""
    tags = set()
    for path in folder.glob("table[23]*.json"):
        rows = TABLE2 if path.name.startswith("table2") else TABLE3
        for row in sorted(rows, key=len, reverse=True):
            if path.name.endswith(f"_{row}.json"):
                tags.add(path.name[len("table2") : -len(f"_{row}.json")].lstrip("_"))
                break
    return sorted(tags, key=lambda t: (len(t), t))


def _describe(part: str) -> str:
    if part.startswith("l"):
        return f"λ = {part[1:]}"
    if part.startswith("p"):
        return f"{part[1:]}³ patches"
    return f"{part[2:]} iterations" if part.startswith("it") else part


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _table(runs: dict, labels: dict, extra: bool = False) -> str:
    header = ["model", *[title for _, title, _ in METRICS], "1 component", "train s"]
    if extra:
        header.append("learnt β")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs.items():
        if run is None:
            lines.append(
                f"| {labels[name]} | " + " | ".join(["not run"] * (len(header) - 1)) + " |"
            )
            continue
        summary, cases = run["summary"], run["cases"]
        cells = [labels[name]]
        for key, _, fmt in METRICS:
            if key in summary:
                cells.append(
                    f"{fmt.format(summary[key]['mean'])} ± {fmt.format(summary[key]['std'])}"
                )
            else:
                cells.append("n/a")
        single = sum(1 for c in cases if c["components"] == 1)
        seconds = f"{run['train_seconds']:.0f}" if run["train_seconds"] else "-"
        cells += [f"{single}/{len(cases)}", seconds]
        if extra:
            prior = run.get("prior") or {}
            cells.append(f"{prior['beta']:.3f}" if "beta" in prior else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _timing(timing: dict) -> str:
    sizes = sorted({tuple(r["shape"]) for r in timing["runs"]})
    header = ["model", *["×".join(map(str, s)) + " (s)" for s in sizes]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in dict.fromkeys(r["model"] for r in timing["runs"]):
        cells = [model]
        for size in sizes:
            run = next(
                (r for r in timing["runs"] if r["model"] == model and tuple(r["shape"]) == size),
                None,
            )
            cells.append(f"{run['median']:.2f}" if run else "-")
        lines.append("| " + " | ".join(cells) + " |")
    machine = timing["machine"]
    lines.append(
        f"\nMedian of 3 runs after one warm-up, {timing['threads']} torch thread(s), CPU: "
        f"{machine['cpu']}; load average at the end {machine['load_average']} (shared machine)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
