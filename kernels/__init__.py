"""Multi-scale deformable attention (installed as ``ddetr_lib.kernels``)."""
