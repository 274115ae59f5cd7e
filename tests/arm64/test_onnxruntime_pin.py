"""The cross build's ONNX Runtime (cpp/cmake/Dependencies.cmake: PyPI's aarch64 wheel) is the version the Python
runtime is tested with (constraints.txt): arm64 and x86-64 parity compare the same release."""

import re
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_the_arm64_onnxruntime_is_the_pinned_version():
    pinned = re.search(r"^onnxruntime==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    wheels = re.findall(r"onnxruntime-([0-9.]+)-cp\d+-cp\d+-manylinux\w+\.whl",
                        (REPO / "cpp" / "cmake" / "Dependencies.cmake").read_text())
    assert wheels and set(wheels) == {pinned}
