"""The runtime: one generation loop over ONNX Runtime, TensorRT and PyTorch backends."""

from .artifacts import Artifacts
from .pipeline import BACKENDS, RARPipeline, Sample

__all__ = ["BACKENDS", "Artifacts", "RARPipeline", "Sample"]
