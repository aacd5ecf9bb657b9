"""ddetr_lib: DETR and Deformable DETR, built step by step for the course.

Modules (one idea each):
    config      plain-data presets (`get_config`)
    utils       NestedTensor (padded batch + mask), distributed helpers
    box_ops     box formats, (G)IoU, inverse_sigmoid (torchvision.ops underneath)
    data        synthetic COCO-format dataset, COCO loading and augmentation
    models      backbone, position encoding, transformer, DETR, matcher, losses, Deformable DETR;
                models.capture looks inside them with forward hooks
    kernels     multi-scale deformable attention (PyTorch reference, Numba CPU/CUDA)
    engine      one training epoch, COCO evaluation
    train       the training command line (`python -m ddetr_lib.train`)
"""
from ddetr_lib.utils import NestedTensor

__all__ = ["NestedTensor"]
__version__ = "0.1.0"
