# The cuda device in two builds from the same .cu sources (docs/cuda.md):
#  - LATHE_CUDA=ON: nvcc compiles them for LATHE_CUDA_ARCHS and links cudart + cuBLASLt;
#  - LATHE_CUDA_SIM=ON: g++ compiles them as C++ with kernels/sim/sim.h force-included, and the
#    kernels run on the CPU simulator (CI has no GPU). Only the CUDA headers are needed.
find_package(CUDAToolkit QUIET)
if(NOT DEFINED CACHE{LATHE_CUDA_SIM_DEFAULTED})
  set(LATHE_CUDA_SIM_DEFAULTED ON CACHE INTERNAL "")
  if(NOT LATHE_CUDA AND CUDAToolkit_FOUND AND NOT LATHE_CUDA_SIM)
    set(LATHE_CUDA_SIM ON CACHE BOOL "Build the cuda device on the CPU simulator (kernels/sim)" FORCE)
  endif()
endif()
if(LATHE_CUDA AND LATHE_CUDA_SIM)
  message(FATAL_ERROR "LATHE_CUDA and LATHE_CUDA_SIM are exclusive: pick the real or the simulated cuda device")
endif()
if((LATHE_CUDA OR LATHE_CUDA_SIM) AND NOT CUDAToolkit_FOUND)
  message(FATAL_ERROR "LATHE_CUDA/LATHE_CUDA_SIM need the CUDA toolkit headers (set CUDAToolkit_ROOT)")
endif()

# Adds CUDA sources to a target for whichever cuda build is configured.
function(lathe_target_cuda_sources target)
  target_sources(${target} PRIVATE ${ARGN})
  if(LATHE_CUDA)
    set_source_files_properties(${ARGN} TARGET_DIRECTORY ${target} PROPERTIES LANGUAGE CUDA)
  elseif(LATHE_CUDA_SIM)
    set_source_files_properties(${ARGN} TARGET_DIRECTORY ${target} PROPERTIES
      LANGUAGE CXX
      COMPILE_OPTIONS "-x;c++;-include;${PROJECT_SOURCE_DIR}/kernels/sim/sim.h")
    target_include_directories(${target} SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  endif()
endfunction()

if(LATHE_CUDA_SIM)
  message(STATUS "lathe: cuda device = CPU simulator (kernels/sim)")
  file(GLOB LATHE_SIM_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/kernels/sim/*.cpp)
  target_sources(lathe PRIVATE ${LATHE_SIM_SOURCES})
  target_include_directories(lathe SYSTEM PUBLIC $<BUILD_INTERFACE:${CUDAToolkit_INCLUDE_DIRS}>)
  target_compile_definitions(lathe PUBLIC $<BUILD_INTERFACE:LATHE_CUDA_SIM_BUILD=1>)
  # The scheduler's bookkeeping runs in every fiber on one OS thread: TSan must not instrument it
  # (barriers are announced to TSan explicitly instead).
  if(LATHE_SANITIZE MATCHES "thread")
    set_source_files_properties(${LATHE_SIM_SOURCES} TARGET_DIRECTORY lathe PROPERTIES
      COMPILE_OPTIONS "-fno-sanitize=thread" COMPILE_DEFINITIONS LATHE_SIM_TSAN=1)
  endif()
  file(GLOB LATHE_CUDA_KERNEL_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/kernels/cuda/*.cu)
  if(LATHE_CUDA_KERNEL_SOURCES)
    lathe_target_cuda_sources(lathe ${LATHE_CUDA_KERNEL_SOURCES})
  endif()
  # The cuda device's host side (allocator, DeviceApi, runtime): plain C++; runtime_sim.cpp is the
  # simulated runtime, runtime_cudart.cpp the real one.
  file(GLOB LATHE_CUDA_HOST_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/kernels/cuda/*.cpp)
  list(FILTER LATHE_CUDA_HOST_SOURCES EXCLUDE REGEX "runtime_cudart\\.cpp$")
  target_sources(lathe PRIVATE ${LATHE_CUDA_HOST_SOURCES})
elseif(LATHE_CUDA)
  message(STATUS "lathe: cuda device = real GPU backend (nvcc, archs ${LATHE_CUDA_ARCHS})")
  set(CMAKE_CUDA_ARCHITECTURES ${LATHE_CUDA_ARCHS})
  enable_language(CUDA)
  # The lathe target exists already, so it does not pick up CMAKE_CUDA_ARCHITECTURES by itself.
  set_target_properties(lathe PROPERTIES CUDA_ARCHITECTURES "${LATHE_CUDA_ARCHS}")
  # lathe requires cxx_std_20, which applies to its .cu files too; CMake 3.25 does not know
  # nvcc's C++20 flag yet.
  if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  # std::array's constexpr members are called from device code (lathe/core/random.h's Philox).
  target_compile_options(lathe PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>)
  # A kernel that spills registers to local memory is slow in a way no test shows, and most
  # sessions have no GPU to time it: ptxas names every spilling kernel in the nvcc build's log
  # (CI's compile-only configuration included). Not an error: three attention kernels spill 20
  # bytes for sm_80 today (docs/cuda.md). scripts/sass.sh shows a kernel's registers.
  target_compile_options(lathe PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xptxas=--warn-on-spills>)
  target_include_directories(lathe SYSTEM PUBLIC $<BUILD_INTERFACE:${CUDAToolkit_INCLUDE_DIRS}>)
  file(GLOB LATHE_CUDA_HOST_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/kernels/cuda/*.cpp)
  list(FILTER LATHE_CUDA_HOST_SOURCES EXCLUDE REGEX "runtime_sim\\.cpp$")
  target_sources(lathe PRIVATE ${LATHE_CUDA_HOST_SOURCES})
  file(GLOB LATHE_CUDA_KERNEL_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/kernels/cuda/*.cu)
  if(LATHE_CUDA_KERNEL_SOURCES)
    lathe_target_cuda_sources(lathe ${LATHE_CUDA_KERNEL_SOURCES})
  endif()
  target_link_libraries(lathe PRIVATE CUDA::cudart CUDA::cublasLt)
  target_compile_definitions(lathe PUBLIC LATHE_CUDA_BUILD=1)
endif()
