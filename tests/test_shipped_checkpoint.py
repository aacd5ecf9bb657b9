"""The small trained checkpoint shipped in checkpoints/ loads strictly and detects.

Scored by pycocotools on freshly generated images (another seed than the one it was
trained on): a trained model finds the shapes, a random one scores about 0.
"""
from pathlib import Path

import torch

from ddetr_lib.config import Config
from ddetr_lib.data import build_dataset
from ddetr_lib.data.synthetic import generate
from ddetr_lib.engine import evaluate
from ddetr_lib.models import build_model, build_postprocessor
from ddetr_lib.train import make_loader

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "toy_deformable_detr_demo.pth"


def test_shipped_toy_checkpoint_detects_unseen_shapes(tmp_path):
    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    cfg = Config(**ckpt["config"]).replace(num_workers=0)
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])  # strict
    root = generate(tmp_path / "fresh", setting="demo", seed=123, num_train=2, num_val=40)
    dataset = build_dataset("val", root, cfg)
    loader = make_loader(dataset, cfg, train=False, seed=0)
    stats, _ = evaluate(model, build_postprocessor(cfg), loader, dataset.coco, torch.device("cpu"), progress=False)
    assert stats["AP50"] > 0.25, stats
