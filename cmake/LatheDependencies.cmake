# Third-party dependencies of the cpu backend, all from Debian packages (scripts/test.sh installs
# them). They are private to liblathe: consumers of the installed package need none of them.
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
set(BLA_VENDOR OpenBLAS)
find_package(BLAS REQUIRED)
find_path(LATHE_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread REQUIRED)

add_library(lathe_cpu_deps INTERFACE)
target_link_libraries(lathe_cpu_deps INTERFACE OpenMP::OpenMP_CXX Eigen3::Eigen ${BLAS_LIBRARIES})
target_include_directories(lathe_cpu_deps INTERFACE ${LATHE_CBLAS_INCLUDE_DIR})
