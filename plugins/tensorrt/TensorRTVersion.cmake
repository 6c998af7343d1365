# convcrf_tensorrt_version(<include dir> <out var>)
#
# The TensorRT version of the headers in <include dir>, read from NvInferVersion.h
# (NV_TENSORRT_MAJOR/MINOR/PATCH; TensorRT >= 10.x may define them through TRT_*_ENTERPRISE).
# Fails with a clear message when the header is missing or the version is older than 10: the
# plugins implement IPluginV3, which TensorRT 8.x/9.x do not have.
#
# Script mode (the CTest tests use it): cmake -DTensorRT_INCLUDE_DIR=<dir> -P TensorRTVersion.cmake
set(CONVCRF_TENSORRT_MIN_MAJOR 10)

function(_convcrf_trt_macro header name out_var)
  if(header MATCHES "#define[ \t]+${name}[ \t]+([A-Za-z0-9_]+)")
    set(_value "${CMAKE_MATCH_1}")
    if(NOT _value MATCHES "^[0-9]+$" AND header MATCHES "#define[ \t]+${_value}[ \t]+([0-9]+)")
      set(_value "${CMAKE_MATCH_1}")  # e.g. NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE
    endif()
    if(_value MATCHES "^[0-9]+$")
      set(${out_var} "${_value}" PARENT_SCOPE)
      return()
    endif()
  endif()
  set(${out_var} "" PARENT_SCOPE)
endfunction()

function(convcrf_tensorrt_version include_dir out_var)
  set(_file "${include_dir}/NvInferVersion.h")
  if(NOT EXISTS "${_file}")
    message(FATAL_ERROR "convcrf: ${_file} not found: TensorRT_INCLUDE_DIR must be the include folder of "
                        "TensorRT >= ${CONVCRF_TENSORRT_MIN_MAJOR} (the one holding NvInferVersion.h)")
  endif()
  file(READ "${_file}" _header)
  _convcrf_trt_macro("${_header}" NV_TENSORRT_MAJOR _major)
  _convcrf_trt_macro("${_header}" NV_TENSORRT_MINOR _minor)
  _convcrf_trt_macro("${_header}" NV_TENSORRT_PATCH _patch)
  if(_major STREQUAL "" OR _minor STREQUAL "")
    message(FATAL_ERROR "convcrf: cannot read the TensorRT version from ${_file}")
  endif()
  if(_patch STREQUAL "")
    set(_patch 0)
  endif()
  set(_version "${_major}.${_minor}.${_patch}")
  if(_major LESS CONVCRF_TENSORRT_MIN_MAJOR)
    message(FATAL_ERROR "convcrf: TensorRT ${_version} is too old (headers in ${include_dir}): the plugin "
                        "needs TensorRT >= ${CONVCRF_TENSORRT_MIN_MAJOR} (IPluginV3; JetPack 6 ships 10.3). "
                        "Point TensorRT_INCLUDE_DIR at a newer TensorRT or build with "
                        "-DCONVCRF_WITH_TENSORRT=OFF")
  endif()
  set(${out_var} "${_version}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  convcrf_tensorrt_version("${TensorRT_INCLUDE_DIR}" _version)
  message(STATUS "TensorRT ${_version} headers accepted")
endif()
