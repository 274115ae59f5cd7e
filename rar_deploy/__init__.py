"""rar-deploy: export RAR image generators to ONNX and TensorRT, run them, prove parity, measure speed."""

from .checkpoint import load_generator, load_tokenizer
from .config import GENERATOR_PRESETS, TOKENIZER_PRESETS, GeneratorConfig, SamplingDefaults, TokenizerConfig
from .errors import CheckpointError, RARDeployError
from .model import RARGenerator, StaticKVCache, VQDecoder, images_to_uint8
from .sampling import Generation, guidance_schedule, reference_generate, sampling_noise

__version__ = "0.1.0"

__all__ = [
    "GENERATOR_PRESETS", "TOKENIZER_PRESETS", "CheckpointError", "Generation", "GeneratorConfig",
    "RARDeployError", "RARGenerator", "SamplingDefaults", "StaticKVCache", "TokenizerConfig", "VQDecoder",
    "guidance_schedule", "images_to_uint8", "load_generator", "load_tokenizer", "reference_generate",
    "sampling_noise",
]
