# Third-party dependencies of the cpu backend, all from Debian packages (scripts/test.sh installs
# them). They are private to liblathe: consumers of the installed package need none of them.
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
set(BLA_VENDOR OpenBLAS)
find_package(BLAS REQUIRED)
find_path(LATHE_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread REQUIRED)

# Model and data I/O: JSON (config.json, tokenizer.json, safetensors headers) and Unicode
# normalization for the WordPiece tokenizer.
find_package(nlohmann_json 3 REQUIRED)
find_path(LATHE_UTF8PROC_INCLUDE_DIR utf8proc.h REQUIRED)
find_library(LATHE_UTF8PROC_LIBRARY utf8proc REQUIRED)

add_library(lathe_cpu_deps INTERFACE)
target_link_libraries(lathe_cpu_deps INTERFACE OpenMP::OpenMP_CXX Eigen3::Eigen ${BLAS_LIBRARIES}
  nlohmann_json::nlohmann_json ${LATHE_UTF8PROC_LIBRARY})
target_include_directories(lathe_cpu_deps INTERFACE ${LATHE_CBLAS_INCLUDE_DIR}
  ${LATHE_UTF8PROC_INCLUDE_DIR})
