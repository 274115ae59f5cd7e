"""The runtime: one generation loop per model family over ONNX Runtime, TensorRT and PyTorch backends."""

from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.pipeline import BACKENDS, RARPipeline, Sample, open_pipeline
from rar_deploy.runtime.var_pipeline import VARPipeline

__all__ = ["BACKENDS", "Artifacts", "RARPipeline", "Sample", "VARPipeline", "open_pipeline"]
