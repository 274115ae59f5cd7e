"""rar-deploy: export RAR image generators to ONNX and TensorRT, run them, prove parity, measure speed.

The runtime (`RARPipeline`, rar-generate, rar-parity, rar-bench, rar-build) needs no torch; the reference
model, the checkpoint loaders and export (`pip install rar-deploy[export]`) do, and are imported on first use.
"""

from importlib import import_module

from rar_deploy.contract.config import (
    GENERATOR_PRESETS,
    TOKENIZER_PRESETS,
    GeneratorConfig,
    RARConfig,
    RARTokenizerConfig,
    SamplingDefaults,
    TokenizerConfig,
)
from rar_deploy.contract.sampling import guidance_schedule, sampling_noise
from rar_deploy.errors import CheckpointError, RARDeployError
from rar_deploy.runtime import (
    Generated,
    Pipeline,
    RARPipeline,
    RARSampling,
    Sample,
    VARPipeline,
    VARSampling,
    open_pipeline,
)
from rar_deploy.version import __version__

_NEED_TORCH = {
    "load_rar_generator": "model.checkpoint", "load_rar_tokenizer": "model.checkpoint",
    "load_generator": "model.checkpoint", "load_tokenizer": "model.checkpoint", "load_models": "model.checkpoint",
    "load_var_generator": "model.checkpoint", "load_var_tokenizer": "model.checkpoint",
    "RARGenerator": "model", "StaticKVCache": "model", "VQDecoder": "model", "images_to_uint8": "model",
    "Generation": "model.reference", "reference_generate": "model.reference",
    "var_reference_generate": "model.reference",
}

__all__ = [
    "CheckpointError", "GENERATOR_PRESETS", "Generated", "Generation", "GeneratorConfig", "Pipeline", "RARConfig",
    "RARDeployError", "RARGenerator", "RARPipeline", "RARSampling", "RARTokenizerConfig", "Sample",
    "SamplingDefaults", "StaticKVCache", "TOKENIZER_PRESETS", "TokenizerConfig", "VARPipeline", "VARSampling",
    "VQDecoder", "__version__", "guidance_schedule", "images_to_uint8", "load_generator", "load_models",
    "load_rar_generator", "load_rar_tokenizer", "load_tokenizer", "load_var_generator", "load_var_tokenizer",
    "open_pipeline", "reference_generate", "sampling_noise", "var_reference_generate",
]


def __getattr__(name: str):
    """The torch parts, imported when first asked for (PEP 562)."""
    if name not in _NEED_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(import_module(f".{_NEED_TORCH[name]}", __name__), name)
    except ImportError as exc:
        raise ImportError(f"rar_deploy.{name} needs torch ({exc.name} is missing): pip install 'rar-deploy[export]'",
                          name=exc.name) from None
    globals()[name] = value
    return value
