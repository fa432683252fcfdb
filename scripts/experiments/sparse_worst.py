"""Where one painted row falls short on the 2D silhouettes: the test images with the largest
HD95 after fine-tuning the bundled 2D model on one painted row, beside the same fine-tune on
dense labels (issue 18's one remaining criterion).

    python scripts/experiments/sparse_worst.py --out docs/images/silhouettes_one_row_worst.png

The rows and budget are ``sparse.py silhouettes --only bch_tuned`` (annotation 1 and dense, seed
``--seed``). The picture has one column per test image, worst first: the image with its labels'
outline (green), the one-row fine-tune's (red), the dense fine-tune's (cyan), 5× enlarged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from napari_difftt.core.inference import predict_volume
from napari_difftt.core.metrics import evaluate_case

sys.path.insert(0, str(Path(__file__).parent))
from segmentation import train_timed  # same folder
from sparse import BUDGET, annotate, load, row_config

OUTLINES = ((0, 255, 0), (255, 0, 0), (0, 255, 255))  # labels, one row, dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--worst", type=int, default=8, help="how many test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load("silhouettes", 0, 0)
    predictions = {}
    for annotation in ("1", "dense"):
        labelled = annotate(train, annotation)
        budget = argparse.Namespace(**BUDGET, seed=args.seed, set=[])
        config = row_config("bch_tuned", labelled, budget)
        trainer = train_timed(f"bch_tuned {annotation}", config, labelled)[0]
        predictions[annotation] = [predict_volume(trainer.model, sample.image, normalise=False)
                                   for sample in test]
    hd95 = {annotation: [evaluate_case(p.segmentation, s.labels, s.spacing)["hd95"]
                         for p, s in zip(found, test, strict=True)]
            for annotation, found in predictions.items()}
    worst = np.argsort(hd95["1"])[::-1][: args.worst]
    columns = []
    for index in worst:
        sample = test[index]
        print(f"{sample.name}: HD95 one row {hd95['1'][index]:.2f} px, dense "
              f"{hd95['dense'][index]:.2f} px")
        masks = (sample.labels, predictions["1"][index].segmentation,
                 predictions["dense"][index].segmentation)
        columns.append(np.concatenate([_outlined(sample.image, mask, colour)
                                       for mask, colour in zip(masks, OUTLINES, strict=True)]))
    picture = np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0))) for c in columns], axis=1)
    height, width = picture.shape[:2]
    Image.fromarray(picture).resize((5 * width, 5 * height), Image.NEAREST).save(args.out)
    print(f"wrote {args.out}")


def _outlined(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The image as 8-bit grey RGB with the inner outline of ``mask`` in ``colour``."""
    grey = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    inside = mask.astype(bool)
    rgb[inside & ~ndimage.binary_erosion(inside)] = colour
    return rgb


if __name__ == "__main__":
    main()
