# convcrf_default_cuda_architectures(<nvcc version> <out var>)
#
# The GPUs our users have, as far as the given nvcc can target them: Turing (75), Ampere (80,
# 86), Jetson Orin (87), Ada (89), Hopper (90), Blackwell (100; Jetson Thor 101 with CUDA 12.8,
# renamed 110 in CUDA 13; 120 for RTX 50), as SASS, plus PTX of the newest so that later GPUs
# JIT-compile it. SASS of sm_XY also runs on later GPUs of the same major (sm_86 on sm_89,
# sm_120 on sm_121).
#
# Not Jetson Xavier (72): CUDA 13 refuses sm_72, and JetPack 5 (Xavier's last) ships TensorRT 8.5,
# which has no IPluginV3; our floor is JetPack 6 (Orin, CUDA 12.x, TensorRT 10.3).
#
# Override the whole list with -DCMAKE_CUDA_ARCHITECTURES=... (or the CUDAARCHS environment
# variable), e.g. "87" on a Jetson Orin, "native" (CMake >= 3.24) for the local GPU.
#
# Runs in script mode too (for the CTest test of this list):
#   cmake -DNVCC_VERSION=12.6 -P CudaArchitectures.cmake   prints the list.
function(convcrf_default_cuda_architectures nvcc_version out_var)
  # architecture:first nvcc:first nvcc without it ("-" = still supported)
  set(_table 75:10.0:- 80:11.0:- 86:11.1:- 87:11.4:- 89:11.8:- 90:11.8:-
             100:12.8:- 101:12.8:13.0 110:13.0:- 120:12.8:-)
  set(_archs "")
  foreach(_row IN LISTS _table)
    string(REPLACE ":" ";" _fields "${_row}")
    list(GET _fields 0 _arch)
    list(GET _fields 1 _first)
    list(GET _fields 2 _last)
    if(nvcc_version VERSION_GREATER_EQUAL _first AND (_last STREQUAL "-" OR nvcc_version VERSION_LESS _last))
      list(APPEND _archs ${_arch})
    endif()
  endforeach()
  if(NOT _archs)
    message(FATAL_ERROR "convcrf: nvcc ${nvcc_version} targets none of our GPUs (Turing and newer); "
                        "use CUDA 12 or newer, or pass -DCMAKE_CUDA_ARCHITECTURES=<list>")
  endif()
  # SASS for every architecture; the newest also as PTX ("120" = "120-real;120-virtual").
  list(POP_BACK _archs _newest)
  list(TRANSFORM _archs APPEND "-real")
  list(APPEND _archs ${_newest})
  set(${out_var} "${_archs}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  convcrf_default_cuda_architectures("${NVCC_VERSION}" _list)
  message(STATUS "CUDA architectures for nvcc ${NVCC_VERSION}: ${_list}")
endif()
