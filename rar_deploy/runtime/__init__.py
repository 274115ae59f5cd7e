"""The runtime: one generation loop per model family over ONNX Runtime, TensorRT and PyTorch backends."""

from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.families import FAMILIES, Family, RARSampling, VARSampling
from rar_deploy.runtime.load import BACKENDS, open_backend
from rar_deploy.runtime.loops import RARLoop, VARLoop, drive
from rar_deploy.runtime.pipeline import Generated, Pipeline, RARPipeline, Sample, VARPipeline, open_pipeline

__all__ = ["BACKENDS", "FAMILIES", "Artifacts", "Family", "Generated", "Pipeline", "RARLoop", "RARPipeline",
           "RARSampling", "Sample", "VARLoop", "VARPipeline", "VARSampling", "drive", "open_backend", "open_pipeline"]
