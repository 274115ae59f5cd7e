"""PyTorch reference models with the official parameter layout."""

from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.kv_cache import StaticKVCache
from rar_deploy.model.tokenizer import VQDecoder, images_to_uint8

__all__ = ["RARGenerator", "StaticKVCache", "VQDecoder", "images_to_uint8"]
