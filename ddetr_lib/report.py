"""Pictures of a trained model's predictions next to the ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_prediction_figure(dataset, results: dict, path: Path, n: int = 6, score_threshold: float = 0.3,
                           max_boxes: int = 30) -> Path:
    """Save a 2 x ``n`` grid: ground truth (top) and predictions with score >= threshold (bottom).

    ``dataset``: a ``ddetr_lib.data.CocoDetection`` (its ``.coco`` and image folder are used to
    show the original, untransformed images); ``results``: ``{image_id: {scores, labels,
    boxes (xyxy, original pixels)}}`` as returned by ``ddetr_lib.engine.evaluate``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ddetr_lib.visualize import draw_boxes

    coco = dataset.coco
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    image_ids = [i for i in sorted(results) if coco.getAnnIds(imgIds=[i])][:n] or sorted(results)[:n]
    folder = Path(dataset.img_folder)
    fig, axes = plt.subplots(2, max(len(image_ids), 1), figsize=(2.6 * max(len(image_ids), 1), 5.6), squeeze=False)
    for col, image_id in enumerate(image_ids):
        info = coco.loadImgs([image_id])[0]
        image = np.asarray(Image.open(folder / info["file_name"]).convert("RGB"))
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
        gt = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        gt[:, 2:] += gt[:, :2]
        draw_boxes(axes[0, col], image, gt, labels=[a["category_id"] for a in anns], names=names,
                   title=f"ground truth: {len(anns)}")
        det = results[image_id]
        keep = (det["scores"] >= score_threshold).nonzero().flatten()[:max_boxes]
        title = f"predicted (score ≥ {score_threshold}): {len(keep)}"
        if len(keep) == 0:  # an early model: show its best guesses rather than an empty picture
            keep = det["scores"].argsort(descending=True)[:max(len(anns), 1)]
            title = f"top {len(keep)} (all scores < {score_threshold})"
        draw_boxes(axes[1, col], image, det["boxes"][keep], labels=det["labels"][keep].tolist(),
                   scores=det["scores"][keep].tolist(), names=names, title=title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
