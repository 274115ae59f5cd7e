# Cross build for 64-bit Arm Linux (Jetson-class boards, Arm servers) on a Debian x86-64 machine, with Debian's
# cross compiler and its arm64 (multiarch) development packages; tests run under qemu-user.
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install g++-aarch64-linux-gnu libpng-dev:arm64 libssl-dev:arm64 libstdc++6:arm64
#   apt-get install -t bookworm-backports qemu-user-static     (bookworm-backports in apt's sources)
#   cmake -S cpp -B build/cpp-arm64 -G Ninja --toolchain cpp/cmake/aarch64-linux-gnu.cmake \
#         -DPython3_EXECUTABLE=.venv/bin/python && cmake --build build/cpp-arm64 && ctest --test-dir build/cpp-arm64
# ONNX Runtime: the library of PyPI's onnxruntime aarch64 wheel unless -DONNXRUNTIME_ROOT names a release.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# Debian multiarch: arm64 libraries in /usr/lib/aarch64-linux-gnu, headers shared in /usr/include
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")  # FindOpenSSL asks it
# ctest runs the target's programs under qemu-user (arm64's loader and libraries come from the multiarch packages)
# as a Jetson Orin-class CPU (Cortex-A78AE; qemu's nearest is cortex-a76: Armv8.2-A, dot product, fp16).
# Debian 12's qemu 7.2 crashes inside ONNX Runtime's CPU detection; 10.0 (bookworm-backports) runs it.
set(RAR_QEMU_CPU cortex-a76 CACHE STRING "The CPU qemu-user emulates for the tests (qemu-aarch64 -cpu help)")
find_program(RAR_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64
             DOC "qemu-user for aarch64 (Debian: qemu-user-static from bookworm-backports)")
if(RAR_QEMU_AARCH64)
  execute_process(COMMAND "${RAR_QEMU_AARCH64}" --version OUTPUT_VARIABLE qemu_version)
  string(REGEX MATCH "version ([0-9]+)" qemu_version "${qemu_version}")
  if(CMAKE_MATCH_1 LESS 8 AND (NOT DEFINED BUILD_TESTING OR BUILD_TESTING))
    message(FATAL_ERROR "${RAR_QEMU_AARCH64} is qemu ${CMAKE_MATCH_1}.x, which crashes inside ONNX Runtime: "
                        "apt-get install -t bookworm-backports qemu-user-static (10.0), or -DBUILD_TESTING=OFF")
  endif()
  set(CMAKE_CROSSCOMPILING_EMULATOR "${RAR_QEMU_AARCH64}")  # its CPU: QEMU_CPU in the tests' environment
endif()
