# `cmake --install` exports lathe::lathe with a package config, for find_package(lathe CONFIG).
# The include directory reaches consumers through the target's INSTALL_INTERFACE include path
# (CMakeLists.txt), so install(TARGETS) does not add it a second time.
include(CMakePackageConfigHelpers)

install(TARGETS lathe EXPORT latheTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/lathe DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT latheTargets NAMESPACE lathe:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/lathe)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/latheConfig.cmake.in
  ${PROJECT_BINARY_DIR}/latheConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/lathe)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/latheConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/latheConfig.cmake ${PROJECT_BINARY_DIR}/latheConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/lathe)
