# Third-party SDKs: the user's own where given (-DONNXRUNTIME_ROOT, -DTENSORRT_ROOT, the CUDA toolkit), otherwise
# provisioned from the package registries, pinned by version and SHA-256, never kept in the repository.

set(RAR_DEPS_DIR "${CMAKE_BINARY_DIR}/_deps" CACHE PATH "Where provisioned SDK files go")

# Download `url` to `file` (unless it is there with the right hash) and check its SHA-256.
function(rar_fetch url file sha256)
  if(EXISTS "${file}")
    file(SHA256 "${file}" have)
    if(have STREQUAL sha256)
      return()
    endif()
  endif()
  message(STATUS "Downloading ${url}")
  file(DOWNLOAD "${url}" "${file}" EXPECTED_HASH SHA256=${sha256} STATUS status TLS_VERIFY ON)
  list(GET status 0 code)
  if(NOT code EQUAL 0)
    message(FATAL_ERROR "Could not download ${url}: ${status}. Point the build at your own SDK instead.")
  endif()
endfunction()

# --- ONNX Runtime: target onnxruntime::onnxruntime -------------------------------------------------------------
# default: headers from the npm registry and the library of the Python onnxruntime package
set(ONNXRUNTIME_ROOT "" CACHE PATH "An ONNX Runtime release with include/ and lib/")
add_library(onnxruntime::onnxruntime SHARED IMPORTED GLOBAL)
if(ONNXRUNTIME_ROOT)
  find_path(ORT_INCLUDE_DIR onnxruntime_cxx_api.h PATHS "${ONNXRUNTIME_ROOT}/include"
            "${ONNXRUNTIME_ROOT}/include/onnxruntime" NO_DEFAULT_PATH REQUIRED)
  find_library(ORT_LIBRARY onnxruntime PATHS "${ONNXRUNTIME_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
else()
  # The official C/C++ headers (API 29; a library accepts headers of its own API version or older), from the npm
  # package com.github.asus4.onnxruntime 0.4.9 (MIT).
  set(ort_tgz "${RAR_DEPS_DIR}/onnxruntime-npm-0.4.9.tgz")
  rar_fetch("https://registry.npmjs.org/com.github.asus4.onnxruntime/-/com.github.asus4.onnxruntime-0.4.9.tgz"
            "${ort_tgz}" e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d)
  set(ORT_INCLUDE_DIR "${RAR_DEPS_DIR}/onnxruntime-include")
  if(NOT EXISTS "${ORT_INCLUDE_DIR}/onnxruntime_cxx_api.h")
    set(headers "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers")
    file(ARCHIVE_EXTRACT INPUT "${ort_tgz}" DESTINATION "${RAR_DEPS_DIR}/onnxruntime-npm" PATTERNS "${headers}/*")
    file(COPY "${RAR_DEPS_DIR}/onnxruntime-npm/${headers}/" DESTINATION "${ORT_INCLUDE_DIR}")
  endif()
  if(CMAKE_CROSSCOMPILING)
    # The library of PyPI's onnxruntime wheel for the target, of the version constraints.txt pins (the library in
    # a wheel does not depend on its Python version).
    if(CMAKE_SYSTEM_PROCESSOR STREQUAL "aarch64")
      set(ort_wheel "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl")
      set(ort_wheel_url "https://files.pythonhosted.org/packages/b7/30/103820b32e9dc1d1fcfc5b519fd2de5bd699d25a25895caf5d726350d1b5/${ort_wheel}")
      set(ort_wheel_sha256 2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c)
    else()
      message(FATAL_ERROR "No provisioned ONNX Runtime for ${CMAKE_SYSTEM_PROCESSOR}: pass "
                          "-DONNXRUNTIME_ROOT=<an ONNX Runtime release for it>")
    endif()
    rar_fetch("${ort_wheel_url}" "${RAR_DEPS_DIR}/${ort_wheel}" ${ort_wheel_sha256})
    set(ort_wheel_dir "${RAR_DEPS_DIR}/onnxruntime-${CMAKE_SYSTEM_PROCESSOR}")
    file(ARCHIVE_EXTRACT INPUT "${RAR_DEPS_DIR}/${ort_wheel}" DESTINATION "${ort_wheel_dir}"
         PATTERNS "onnxruntime/capi/libonnxruntime.so.1.*")
    file(GLOB ort_target_library "${ort_wheel_dir}/onnxruntime/capi/libonnxruntime.so.1.*")
  else()
    # The library of the Python package the project already installs (capi/libonnxruntime.so.1.<version>): link
    # against exactly the library that runs.
    find_package(Python3 COMPONENTS Interpreter REQUIRED)
    execute_process(COMMAND "${Python3_EXECUTABLE}" -c
                    "import glob, os, onnxruntime; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.1.*'))[0])"
                    OUTPUT_VARIABLE ort_target_library OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE found)
    if(NOT found EQUAL 0)
      message(FATAL_ERROR "No ONNX Runtime found: pass -DONNXRUNTIME_ROOT=<an ONNX Runtime release>, or "
                          "-DPython3_EXECUTABLE=<a python with onnxruntime installed> (the project's .venv/bin/python)")
    endif()
  endif()
  # Its SONAME is libonnxruntime.so.1, hence the links in the build tree.
  set(ort_lib_dir "${CMAKE_BINARY_DIR}/onnxruntime-lib")
  file(MAKE_DIRECTORY "${ort_lib_dir}")
  file(CREATE_LINK "${ort_target_library}" "${ort_lib_dir}/libonnxruntime.so.1" SYMBOLIC)
  file(CREATE_LINK "${ort_target_library}" "${ort_lib_dir}/libonnxruntime.so" SYMBOLIC)
  set(ORT_LIBRARY "${ort_lib_dir}/libonnxruntime.so")
endif()
set_target_properties(onnxruntime::onnxruntime PROPERTIES IMPORTED_LOCATION "${ORT_LIBRARY}"
                      INTERFACE_INCLUDE_DIRECTORIES "${ORT_INCLUDE_DIR}")
message(STATUS "ONNX Runtime: ${ORT_LIBRARY}, headers ${ORT_INCLUDE_DIR}")

# --- CUDA runtime: the CUDA memory of the runtime (ONNX Runtime's CUDA provider, TensorRT) ---------------------
# A cross build looks only where -DCUDAToolkit_ROOT points (the target's toolkit, JetPack's on a Jetson): the
# host's toolkit has no libraries for the target.
if(NOT CMAKE_CROSSCOMPILING OR CUDAToolkit_ROOT)
  find_package(CUDAToolkit QUIET)
endif()
if(CUDAToolkit_FOUND)
  set(RAR_WITH_CUDA ON)
  message(STATUS "CUDA toolkit ${CUDAToolkit_VERSION}: CUDA memory and graphs built in")
else()
  set(RAR_WITH_CUDA OFF)
  message(STATUS "No CUDA toolkit for ${CMAKE_SYSTEM_PROCESSOR}: CPU only (ONNX Runtime)")
endif()

# --- TensorRT: target tensorrt::headers (and tensorrt::nvinfer to link) ----------------------------------------
set(TENSORRT_ROOT "" CACHE PATH "A TensorRT release with include/ and lib/, to build the tensorrt backend")
option(RAR_TENSORRT_RTX "TENSORRT_ROOT is a TensorRT-RTX SDK" OFF)
# TensorRT 10.14 headers from PyPI's kernel-lens 2.0.1: a compile check only (no library to link or run)
option(RAR_TENSORRT_COMPILE_CHECK "Compile the tensorrt backend against provisioned TensorRT 10 headers" OFF)
add_library(tensorrt::headers INTERFACE IMPORTED GLOBAL)
if(TENSORRT_ROOT)
  # a release's include/ and lib/, or a Debian-style install's multiarch folders (JetPack: -DTENSORRT_ROOT=/usr)
  find_path(TRT_INCLUDE_DIR NvInfer.h PATHS "${TENSORRT_ROOT}/include" "${TENSORRT_ROOT}/include/${CMAKE_LIBRARY_ARCHITECTURE}"
            NO_DEFAULT_PATH REQUIRED)
  find_library(TRT_LIBRARY NAMES nvinfer nvinfer_10 tensorrt_rtx PATHS "${TENSORRT_ROOT}/lib"
               "${TENSORRT_ROOT}/lib/${CMAKE_LIBRARY_ARCHITECTURE}" NO_DEFAULT_PATH REQUIRED)
  add_library(tensorrt::nvinfer SHARED IMPORTED GLOBAL)
  set_target_properties(tensorrt::nvinfer PROPERTIES IMPORTED_LOCATION "${TRT_LIBRARY}")
elseif(RAR_TENSORRT_COMPILE_CHECK)
  set(kl_wheel "${RAR_DEPS_DIR}/kernel_lens-2.0.1-py3-none-any.whl")
  rar_fetch("https://files.pythonhosted.org/packages/01/db/065d4b52e3550f7f981ddd81dc525435622acbabf467226196447e0f2547/kernel_lens-2.0.1-py3-none-any.whl"
            "${kl_wheel}" 07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0)
  file(ARCHIVE_EXTRACT INPUT "${kl_wheel}" DESTINATION "${RAR_DEPS_DIR}/kernel-lens" PATTERNS "kernel_lens/include/*")
  set(TRT_INCLUDE_DIR "${RAR_DEPS_DIR}/kernel-lens/kernel_lens/include/tensorrt")
endif()
if(TRT_INCLUDE_DIR)
  set_target_properties(tensorrt::headers PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${TRT_INCLUDE_DIR}")
  message(STATUS "TensorRT headers: ${TRT_INCLUDE_DIR}")
endif()
