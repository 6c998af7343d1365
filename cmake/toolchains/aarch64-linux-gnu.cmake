# Cross-compile the native libraries for 64-bit ARM Linux (Jetson, Raspberry Pi 4/5, Graviton)
# with Debian/Ubuntu's GNU cross toolchain (apt-get install g++-aarch64-linux-gnu), and run
# the C++ tests under user-mode QEMU (apt-get install qemu-user):
#
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
#         -DCONVCRF_WITH_CUDA=OFF && cmake --build build-aarch64 && ctest --test-dir build-aarch64 -L cpu
#
# On an aarch64 machine no toolchain file is needed: CMake detects the architecture itself.
# CONVCRF_AARCH64_PREFIX (default aarch64-linux-gnu-) names the compilers;
# CONVCRF_AARCH64_SYSROOT (default: Debian's multiarch cross root) is where QEMU finds the
# aarch64 dynamic loader and C++ runtime.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CONVCRF_AARCH64_PREFIX "aarch64-linux-gnu-" CACHE STRING "Prefix of the aarch64 cross compilers")
set(CMAKE_C_COMPILER "${CONVCRF_AARCH64_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${CONVCRF_AARCH64_PREFIX}g++")

set(CONVCRF_AARCH64_SYSROOT "/usr/aarch64-linux-gnu" CACHE PATH
    "Root of the aarch64 runtime libraries (for QEMU's -L)")
set(CMAKE_FIND_ROOT_PATH "${CONVCRF_AARCH64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(CONVCRF_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(CONVCRF_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${CONVCRF_QEMU_AARCH64};-L;${CONVCRF_AARCH64_SYSROOT}")
endif()
