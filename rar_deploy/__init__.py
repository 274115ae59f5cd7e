"""rar-deploy: export RAR image generators to ONNX and TensorRT, run them, prove parity, measure speed."""

__version__ = "0.1.0"  # before the imports: manifest.py records it

from .checkpoint import load_generator, load_tokenizer
from .config import GENERATOR_PRESETS, TOKENIZER_PRESETS, GeneratorConfig, SamplingDefaults, TokenizerConfig
from .errors import CheckpointError, RARDeployError
from .model import RARGenerator, StaticKVCache, VQDecoder, images_to_uint8
from .reference import Generation, reference_generate
from .runtime import RARPipeline
from .sampling import guidance_schedule, sampling_noise

__all__ = [
    "GENERATOR_PRESETS", "TOKENIZER_PRESETS", "CheckpointError", "Generation", "GeneratorConfig", "RARPipeline",
    "RARDeployError", "RARGenerator", "SamplingDefaults", "StaticKVCache", "TokenizerConfig", "VQDecoder",
    "guidance_schedule", "images_to_uint8", "load_generator", "load_tokenizer", "reference_generate",
    "sampling_noise",
]
