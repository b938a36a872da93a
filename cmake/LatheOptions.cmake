# Build options (names are part of the contract: see docs/architecture.md).
include(GNUInstallDirs)

option(LATHE_CUDA "Build the real CUDA backend with nvcc" OFF)
option(LATHE_CUDA_SIM "Build the cuda device on the CPU simulator (kernels/sim)" OFF)
set(LATHE_CUDA_ARCHS "80;90a" CACHE STRING "CUDA architectures for the real backend")
set(LATHE_SANITIZE "" CACHE STRING "Sanitizers: 'address;undefined' or 'thread'")
option(LATHE_BUILD_TESTS "Build the tests" ${PROJECT_IS_TOP_LEVEL})
option(LATHE_BUILD_BENCH "Build lathe-bench (needs Google Benchmark)" ${PROJECT_IS_TOP_LEVEL})
option(LATHE_BUILD_EXAMPLES "Build the example programs" ${PROJECT_IS_TOP_LEVEL})
option(LATHE_NATIVE "Compile for the build machine's CPU (-march=native)" ON)
option(BUILD_SHARED_LIBS "Build liblathe as a shared library" ON)

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()

set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib)
set(CMAKE_ARCHIVE_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib)
# Installed programs find liblathe next to them.
set(CMAKE_INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")

find_program(LATHE_CCACHE ccache)
if(LATHE_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${LATHE_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${LATHE_CCACHE})
endif()

# Warnings for lathe's own code (an interface target, so consumers do not inherit them).
add_library(lathe_warnings INTERFACE)
target_compile_options(lathe_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow=local -Wno-unknown-pragmas>)
if(LATHE_NATIVE)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  # GCC 12.2 with -march=native on this machine type (znver3 tuning + AVX-512) miscompiles vector
  # constants whose upper half is zero: it broadcasts the lower half over the whole register, even
  # at -O0. Detect it at configure time and keep AVX-512 off where it happens.
  include(CheckCXXSourceRuns)
  set(CMAKE_REQUIRED_FLAGS "-march=native -O2")
  check_cxx_source_runs([=[
    __attribute__((noinline)) int check(const char* c) {
      for (int i = 16; i < 32; ++i) if (c[i]) return 1;
      return 0;
    }
    int main() { char a[32] = {5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}; return check(a); }
  ]=] LATHE_NATIVE_CODEGEN_OK)
  unset(CMAKE_REQUIRED_FLAGS)
  if(NOT LATHE_NATIVE_CODEGEN_OK)
    message(STATUS "lathe: this compiler miscompiles AVX-512 constants here; building with -mno-avx512f")
    add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-mno-avx512f>)
  endif()
endif()

function(lathe_apply_sanitizers target)
  if(LATHE_SANITIZE)
    string(REPLACE ";" "," _san "${LATHE_SANITIZE}")
    target_compile_options(${target} PUBLIC -fsanitize=${_san} -fno-omit-frame-pointer -g)
    target_link_options(${target} PUBLIC -fsanitize=${_san})
  endif()
endfunction()
