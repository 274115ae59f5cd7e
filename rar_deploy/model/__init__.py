"""PyTorch reference models with the official parameter layout."""

from .generator import RARGenerator
from .kv_cache import StaticKVCache
from .tokenizer import VQDecoder, images_to_uint8

__all__ = ["RARGenerator", "StaticKVCache", "VQDecoder", "images_to_uint8"]
