# tests/capi/run_consumer_test.cmake — the installed-package tests (CTest capi_consumer_*):
#   STEP=install    `cmake --install` of the build tree into WORK/prefix (checks the files there)
#                   and the fixture checkpoint into WORK/fixture
#   STEP=cmake      tests/consumer configured with find_package(resunetpp) against WORK/prefix
#                   only, built (shared and static) and run
#   STEP=pkgconfig  tests/consumer/Makefile built with `pkg-config --cflags --libs resunetpp` and run;
#                   prints RPP_SKIPPED (CTest: skipped) when pkg-config or make is missing
# Sanitizer builds (SANITIZE=...) pass the same -fsanitize flags to the consumer, whose programs
# must link the sanitizer runtimes that the installed libraries need.
foreach(v STEP BUILD_DIR SOURCE_DIR WORK FIXTURE LIBDIR GENERATOR C_COMPILER CXX_COMPILER BUILD_TYPE)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_consumer_test.cmake: -D${v}=... is required")
  endif()
endforeach()

set(prefix ${WORK}/prefix)
set(checkpoint ${WORK}/fixture/tiny.safetensors)

function(run out_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(REPLACE ";" " " cmd "${ARGN}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${cmd}\n${out}\n${err}")
  endif()
  message(STATUS "ok: ${cmd}")
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

set(san_cflags "")
set(san_ldflags "")
if(SANITIZE)
  set(san_cflags "-fsanitize=${SANITIZE} -fno-omit-frame-pointer")
  set(san_ldflags "-fsanitize=${SANITIZE}")
endif()

if(STEP STREQUAL "install")
  file(REMOVE_RECURSE ${WORK})
  file(MAKE_DIRECTORY ${WORK}/fixture)
  run(out ${FIXTURE} ${WORK}/fixture)
  run(out ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --config ${BUILD_TYPE})
  foreach(f include/resunetpp/resunetpp.h ${LIBDIR}/libresunetpp.so ${LIBDIR}/libresunetpp.a
            ${LIBDIR}/cmake/resunetpp/resunetppConfig.cmake ${LIBDIR}/cmake/resunetpp/resunetppConfigVersion.cmake
            ${LIBDIR}/cmake/resunetpp/resunetppTargets.cmake ${LIBDIR}/pkgconfig/resunetpp.pc)
    if(NOT EXISTS ${prefix}/${f})
      message(FATAL_ERROR "cmake --install did not install ${f}")
    endif()
  endforeach()
  file(GLOB headers RELATIVE ${prefix}/include ${prefix}/include/*/*)
  if(NOT headers STREQUAL "resunetpp/resunetpp.h")
    message(FATAL_ERROR "installed headers should be resunetpp/resunetpp.h only, got: ${headers}")
  endif()

elseif(STEP STREQUAL "cmake")
  file(REMOVE_RECURSE ${WORK}/cmake)
  run(out ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK}/cmake -G ${GENERATOR}
      -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
      -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
      "-DCMAKE_C_FLAGS=${san_cflags}" "-DCMAKE_EXE_LINKER_FLAGS=${san_ldflags}")
  # The package must come from the install, not from the build tree.
  file(STRINGS ${WORK}/cmake/CMakeCache.txt dir_line REGEX "^resunetpp_DIR:")
  if(NOT dir_line MATCHES "${prefix}/")
    message(FATAL_ERROR "find_package(resunetpp) did not use the installed package: ${dir_line}")
  endif()
  run(out ${CMAKE_COMMAND} --build ${WORK}/cmake)
  run(shared_out ${WORK}/cmake/consumer_shared ${checkpoint})
  run(static_out ${WORK}/cmake/consumer_static ${checkpoint})
  message(STATUS "consumer_shared:\n${shared_out}")
  if(NOT shared_out STREQUAL static_out)
    message(FATAL_ERROR "the shared and static consumers disagree:\n${shared_out}\n---\n${static_out}")
  endif()
  if(NOT shared_out MATCHES "mask: [0-9]+ of 3072 pixels polyp")
    message(FATAL_ERROR "unexpected consumer output: ${shared_out}")
  endif()
  file(WRITE ${WORK}/cmake_consumer_output.txt "${shared_out}")

elseif(STEP STREQUAL "pkgconfig")
  find_program(PKG_CONFIG_EXE pkg-config)
  find_program(MAKE_EXE NAMES make gmake)
  if(NOT PKG_CONFIG_EXE OR NOT MAKE_EXE)
    message("RPP_SKIPPED: pkg-config or make is not installed")
    return()
  endif()
  set(pcpath ${prefix}/${LIBDIR}/pkgconfig)
  run(version ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${pcpath} ${PKG_CONFIG_EXE} --modversion resunetpp)
  run(flags ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${pcpath} ${PKG_CONFIG_EXE} --cflags --libs resunetpp)
  string(STRIP "${version}" version)
  string(STRIP "${flags}" flags)
  message(STATUS "pkg-config resunetpp ${version}: ${flags}")
  # The .pc file is relocatable (${pcfiledir}/../..): its folders must resolve into the prefix.
  if(NOT flags MATCHES "-I([^ ]+)" OR NOT CMAKE_MATCH_1)
    message(FATAL_ERROR "no -I in pkg-config's flags: ${flags}")
  endif()
  file(REAL_PATH "${CMAKE_MATCH_1}" inc)
  if(NOT flags MATCHES "-L([^ ]+)" OR NOT CMAKE_MATCH_1)
    message(FATAL_ERROR "no -L in pkg-config's flags: ${flags}")
  endif()
  file(REAL_PATH "${CMAKE_MATCH_1}" lib)
  file(REAL_PATH "${prefix}" real_prefix)
  if(NOT inc STREQUAL "${real_prefix}/include" OR NOT lib STREQUAL "${real_prefix}/${LIBDIR}")
    message(FATAL_ERROR "pkg-config does not point into the install prefix ${prefix}: ${flags}")
  endif()
  file(REMOVE_RECURSE ${WORK}/make)
  file(MAKE_DIRECTORY ${WORK}/make)
  run(out ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${pcpath}
      ${MAKE_EXE} -C ${SOURCE_DIR}/tests/consumer O=${WORK}/make CC=${C_COMPILER}
      "CFLAGS=-O2 ${san_cflags}" "LDFLAGS=${san_ldflags}")
  run(make_out ${WORK}/make/consumer ${checkpoint})
  message(STATUS "consumer (make):\n${make_out}")
  if(EXISTS ${WORK}/cmake_consumer_output.txt)
    file(READ ${WORK}/cmake_consumer_output.txt cmake_out)
    if(NOT make_out STREQUAL cmake_out)
      message(FATAL_ERROR "the pkg-config and CMake consumers disagree:\n${make_out}\n---\n${cmake_out}")
    endif()
  endif()

else()
  message(FATAL_ERROR "unknown STEP '${STEP}'")
endif()
