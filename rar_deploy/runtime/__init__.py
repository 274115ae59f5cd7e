"""The runtime: one generation loop over ONNX Runtime, TensorRT and PyTorch backends."""

from .artifacts import Artifacts
from .pipeline import BACKENDS, RARPipeline, image_grid

__all__ = ["BACKENDS", "Artifacts", "RARPipeline", "image_grid"]
