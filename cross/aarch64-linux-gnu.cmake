# CMake toolchain for the C/C++ parts of blipd (llama.cpp, libjpeg-turbo)
# when cross-compiling to aarch64 Linux with Debian/Ubuntu's cross gcc.
# cross/build.sh points CMAKE_TOOLCHAIN_FILE here.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_ASM_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# llama.cpp's CPU kernels are chosen at compile time (-march): int8 dot
# products (dotprod) and f16 arithmetic make Q4/Q8 matmuls several times
# faster on boards that have them. llama-cpp-sys-2 pins "armv8-a" for every
# non-native aarch64 build, after the command-line definitions; a toolchain
# file runs later still, so this is where the board's architecture wins.
if(DEFINED ENV{BLIPD_ARM_ARCH} AND NOT "$ENV{BLIPD_ARM_ARCH}" STREQUAL "")
  set(GGML_CPU_ARM_ARCH "$ENV{BLIPD_ARM_ARCH}" CACHE STRING "ggml -march for aarch64" FORCE)
endif()
