"""The runtime: one generation loop per model family over ONNX Runtime, TensorRT and PyTorch backends."""

from .artifacts import Artifacts
from .pipeline import BACKENDS, RARPipeline, Sample, open_pipeline
from .var_pipeline import VARPipeline

__all__ = ["BACKENDS", "Artifacts", "RARPipeline", "Sample", "VARPipeline", "open_pipeline"]
