"""What this machine's NVIDIA GPU is, asked through cuda-python (no torch): None where there is none,
or where cuda-python is not installed."""

from __future__ import annotations


def _runtime():
    try:
        from cuda.bindings import runtime
    except ImportError:
        return None
    return runtime


def cuda_capability(device_index: int = 0) -> str | None:
    """The GPU's compute capability as TensorRT names it, e.g. 'SM89'."""
    rt = _runtime()
    if rt is None:
        return None
    error, count = rt.cudaGetDeviceCount()
    if error != rt.cudaError_t.cudaSuccess or count <= device_index:
        return None
    major = rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device_index)[1]
    minor = rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device_index)[1]
    return f"SM{major}{minor}"


def device_name(device_index: int = 0) -> str | None:
    rt = _runtime()
    if rt is None or cuda_capability(device_index) is None:
        return None
    error, properties = rt.cudaGetDeviceProperties(device_index)
    name = properties.name if error == rt.cudaError_t.cudaSuccess else None
    return name.decode().rstrip("\x00") if isinstance(name, bytes) else name
