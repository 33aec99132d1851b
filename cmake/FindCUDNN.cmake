# cmake/FindCUDNN.cmake — finds the NVIDIA cuDNN library (header cudnn.h + cudnn_version.h,
# library libcudnn.so) and defines the imported target CUDNN::cudnn.
#
#   find_package(CUDNN [9.0] [REQUIRED|QUIET])
#   target_link_libraries(mylib PUBLIC CUDNN::cudnn)
#
# Where it looks:
#  1. Explicit locations, when any is given; then ONLY there, so that a stated location is never
#     silently replaced by another copy:
#       CUDNN_ROOT, CUDNN_ROOT_DIR (CMake or environment variables): a cuDNN tarball layout,
#         <root>/include with <root>/lib or <root>/lib64 (or lib/x86_64-linux-gnu);
#       RESUNETPP_CUDNN_WHEEL_DIR (CMake or environment variable): the `nvidia/cudnn` folder of a
#         Python nvidia-cudnn-cu12 / nvidia-cudnn-cu13 wheel (include/ and lib/ inside it).
#  2. Otherwise the CUDA toolkit (CUDAToolkit_* variables when find_package(CUDAToolkit) ran,
#     CUDA_PATH / CUDA_HOME, /usr/local/cuda) and the system's default paths.
#  3. Otherwise, when python3 is available, the installed nvidia-cudnn wheel that
#       python3 -c "import nvidia.cudnn ..."
#     reports. Any failure of that probe (no python3, no package, timeout) only means "not there".
# The library is looked for next to the header first, so that header and library come from the
# same installation. Changing any of the hints above forgets the previous result.
#
# Result variables:
#   CUDNN_FOUND, CUDNN_VERSION (e.g. 9.19.0), CUDNN_VERSION_MAJOR/_MINOR/_PATCH,
#   CUDNN_INCLUDE_DIRS, CUDNN_LIBRARIES
# Cache variables: CUDNN_INCLUDE_DIR, CUDNN_LIBRARY.
# Imported target: CUDNN::cudnn (shared library; carries the include folder).
#
# cuBLAS needs no module: find_package(CUDAToolkit) provides CUDA::cublas.

include(FindPackageHandleStandardArgs)

# ---- explicit locations ----
set(_cudnn_roots "")
foreach(_v CUDNN_ROOT CUDNN_ROOT_DIR)
  if(DEFINED ${_v} AND NOT "${${_v}}" STREQUAL "")
    list(APPEND _cudnn_roots "${${_v}}")
  elseif(DEFINED ENV{${_v}} AND NOT "$ENV{${_v}}" STREQUAL "")
    list(APPEND _cudnn_roots "$ENV{${_v}}")
  endif()
endforeach()
set(_cudnn_wheel_dir "")
if(DEFINED RESUNETPP_CUDNN_WHEEL_DIR AND NOT "${RESUNETPP_CUDNN_WHEEL_DIR}" STREQUAL "")
  set(_cudnn_wheel_dir "${RESUNETPP_CUDNN_WHEEL_DIR}")
elseif(DEFINED ENV{RESUNETPP_CUDNN_WHEEL_DIR} AND NOT "$ENV{RESUNETPP_CUDNN_WHEEL_DIR}" STREQUAL "")
  set(_cudnn_wheel_dir "$ENV{RESUNETPP_CUDNN_WHEEL_DIR}")
endif()
if(_cudnn_wheel_dir)
  list(APPEND _cudnn_roots "${_cudnn_wheel_dir}")
endif()

# A new set of hints invalidates what an earlier configure found.
set(_cudnn_key "${_cudnn_roots}")
if(DEFINED _CUDNN_SEARCH_KEY AND NOT "${_CUDNN_SEARCH_KEY}" STREQUAL "${_cudnn_key}")
  unset(CUDNN_INCLUDE_DIR CACHE)
  unset(CUDNN_LIBRARY CACHE)
endif()
set(_CUDNN_SEARCH_KEY "${_cudnn_key}" CACHE INTERNAL "cuDNN hints of the last search")

set(_cudnn_lib_suffixes lib lib64 lib/x86_64-linux-gnu lib/aarch64-linux-gnu lib/sbsa-linux-gnu
  targets/x86_64-linux/lib targets/sbsa-linux/lib)
set(_cudnn_inc_suffixes include include/x86_64-linux-gnu include/aarch64-linux-gnu
  targets/x86_64-linux/include targets/sbsa-linux/include)
# The wheels ship only the versioned file (libcudnn.so.9); find_library accepts full names.
set(_cudnn_lib_names cudnn libcudnn.so.9 libcudnn.so.8)

# Looks for the header under `roots` (NO_DEFAULT_PATH when `only` is set), then the library,
# first in the installation that holds the header.
macro(_cudnn_search roots only)
  if(NOT CUDNN_INCLUDE_DIR)
    if(${only})
      find_path(CUDNN_INCLUDE_DIR cudnn_version.h HINTS ${roots} PATH_SUFFIXES ${_cudnn_inc_suffixes}
        NO_DEFAULT_PATH)
    else()
      find_path(CUDNN_INCLUDE_DIR cudnn_version.h HINTS ${roots} PATH_SUFFIXES ${_cudnn_inc_suffixes})
    endif()
  endif()
  if(CUDNN_INCLUDE_DIR AND NOT EXISTS "${CUDNN_INCLUDE_DIR}/cudnn.h")
    # cudnn_version.h alone (a partial install): not usable.
    unset(CUDNN_INCLUDE_DIR CACHE)
  endif()
  if(CUDNN_INCLUDE_DIR AND NOT CUDNN_LIBRARY)
    get_filename_component(_cudnn_home "${CUDNN_INCLUDE_DIR}" DIRECTORY)
    # include/x86_64-linux-gnu and targets/<arch>/include sit one level deeper.
    get_filename_component(_cudnn_home2 "${_cudnn_home}" DIRECTORY)
    find_library(CUDNN_LIBRARY NAMES ${_cudnn_lib_names} HINTS "${_cudnn_home}" "${_cudnn_home2}"
      PATH_SUFFIXES ${_cudnn_lib_suffixes} NO_DEFAULT_PATH)
    if(NOT CUDNN_LIBRARY AND NOT ${only})
      find_library(CUDNN_LIBRARY NAMES ${_cudnn_lib_names} HINTS ${roots} PATH_SUFFIXES ${_cudnn_lib_suffixes})
    endif()
  endif()
endmacro()

if(_cudnn_roots)
  _cudnn_search("${_cudnn_roots}" TRUE)
  set(_cudnn_where "${_cudnn_roots} (given by CUDNN_ROOT / CUDNN_ROOT_DIR / RESUNETPP_CUDNN_WHEEL_DIR)")
else()
  set(_cudnn_toolkit_roots "")
  foreach(_d CUDAToolkit_TARGET_DIR CUDAToolkit_LIBRARY_ROOT)
    if(DEFINED ${_d} AND NOT "${${_d}}" STREQUAL "")
      list(APPEND _cudnn_toolkit_roots "${${_d}}")
    endif()
  endforeach()
  if(DEFINED CUDAToolkit_INCLUDE_DIRS)
    foreach(_d ${CUDAToolkit_INCLUDE_DIRS})
      get_filename_component(_d "${_d}" DIRECTORY)
      list(APPEND _cudnn_toolkit_roots "${_d}")
    endforeach()
  endif()
  foreach(_v CUDA_PATH CUDA_HOME CUDAToolkit_ROOT)
    if(DEFINED ENV{${_v}} AND NOT "$ENV{${_v}}" STREQUAL "")
      list(APPEND _cudnn_toolkit_roots "$ENV{${_v}}")
    endif()
  endforeach()
  list(APPEND _cudnn_toolkit_roots /usr/local/cuda)
  list(REMOVE_DUPLICATES _cudnn_toolkit_roots)
  _cudnn_search("${_cudnn_toolkit_roots}" FALSE)
  set(_cudnn_where "the CUDA toolkit (${_cudnn_toolkit_roots}) and the system paths")

  if(NOT CUDNN_INCLUDE_DIR OR NOT CUDNN_LIBRARY)
    # An installed Python wheel. nvidia/cudnn may be a namespace package (no __file__).
    find_program(_CUDNN_PYTHON3 NAMES python3)
    mark_as_advanced(_CUDNN_PYTHON3)
    if(_CUDNN_PYTHON3)
      execute_process(
        COMMAND "${_CUDNN_PYTHON3}" -c
          "import os, nvidia.cudnn as m; f = getattr(m, '__file__', None); print(os.path.dirname(f) if f else list(m.__path__)[0])"
        RESULT_VARIABLE _cudnn_py_rc OUTPUT_VARIABLE _cudnn_py_dir ERROR_QUIET
        OUTPUT_STRIP_TRAILING_WHITESPACE TIMEOUT 30)
      if(_cudnn_py_rc EQUAL 0 AND IS_DIRECTORY "${_cudnn_py_dir}")
        unset(CUDNN_INCLUDE_DIR CACHE)
        unset(CUDNN_LIBRARY CACHE)
        _cudnn_search("${_cudnn_py_dir}" TRUE)
        set(_cudnn_where "${_cudnn_where}, and the Python wheel at ${_cudnn_py_dir}")
      else()
        set(_cudnn_where "${_cudnn_where}; python3 reports no nvidia.cudnn package")
      endif()
    endif()
  endif()
endif()

# ---- version ----
unset(CUDNN_VERSION)
if(CUDNN_INCLUDE_DIR AND EXISTS "${CUDNN_INCLUDE_DIR}/cudnn_version.h")
  file(STRINGS "${CUDNN_INCLUDE_DIR}/cudnn_version.h" _cudnn_version_lines
    REGEX "^#define[ \t]+CUDNN_(MAJOR|MINOR|PATCHLEVEL)[ \t]+[0-9]+")
  foreach(_part MAJOR MINOR PATCHLEVEL)
    set(_cudnn_${_part} "")
    foreach(_line ${_cudnn_version_lines})
      if(_line MATCHES "^#define[ \t]+CUDNN_${_part}[ \t]+([0-9]+)")
        set(_cudnn_${_part} "${CMAKE_MATCH_1}")
      endif()
    endforeach()
  endforeach()
  if(NOT "${_cudnn_MAJOR}" STREQUAL "" AND NOT "${_cudnn_MINOR}" STREQUAL ""
     AND NOT "${_cudnn_PATCHLEVEL}" STREQUAL "")
    set(CUDNN_VERSION_MAJOR ${_cudnn_MAJOR})
    set(CUDNN_VERSION_MINOR ${_cudnn_MINOR})
    set(CUDNN_VERSION_PATCH ${_cudnn_PATCHLEVEL})
    set(CUDNN_VERSION "${_cudnn_MAJOR}.${_cudnn_MINOR}.${_cudnn_PATCHLEVEL}")
  endif()
endif()

if(NOT CUDNN_FIND_QUIETLY AND (NOT CUDNN_INCLUDE_DIR OR NOT CUDNN_LIBRARY))
  message(STATUS "cuDNN: searched ${_cudnn_where}")
endif()

find_package_handle_standard_args(CUDNN
  REQUIRED_VARS CUDNN_LIBRARY CUDNN_INCLUDE_DIR CUDNN_VERSION
  VERSION_VAR CUDNN_VERSION)
mark_as_advanced(CUDNN_INCLUDE_DIR CUDNN_LIBRARY)

if(CUDNN_FOUND)
  set(CUDNN_INCLUDE_DIRS "${CUDNN_INCLUDE_DIR}")
  set(CUDNN_LIBRARIES "${CUDNN_LIBRARY}")
  if(NOT TARGET CUDNN::cudnn)
    add_library(CUDNN::cudnn SHARED IMPORTED)
    set_target_properties(CUDNN::cudnn PROPERTIES
      IMPORTED_LOCATION "${CUDNN_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CUDNN_INCLUDE_DIR}")
  endif()
endif()
