#!/usr/bin/env bash
# tools/bundle_deps.sh — for building on a GPU server that has the CUDA toolkit but no package
# manager or network: copies GoogleTest's source and the stb headers from this machine (Debian
# packages googletest and libstb-dev) into .vendor/ (ignored by git), so that the folder can be
# shipped with the source tree. Then, on the GPU server:
#   cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
#     -DRESUNETPP_GTEST_SOURCE_DIR=$PWD/.vendor/googletest -DRESUNETPP_STB_DIR=$PWD/.vendor/stb
#   cmake --build build && ctest --test-dir build
# cuDNN is looked for in the toolkit, under CUDNN_ROOT (a tarball layout) or in a Python
# nvidia-cudnn wheel (see cmake/FindCUDNN.cmake).
set -euo pipefail
cd "$(dirname "$0")/.."
gtest_src=${GTEST_SRC:-/usr/src/googletest}
stb_src=${STB_SRC:-/usr/include/stb}
[ -f "$gtest_src/CMakeLists.txt" ] || { echo "error: no GoogleTest source in $gtest_src (apt-get install googletest)" >&2; exit 1; }
[ -f "$stb_src/stb_image.h" ] || { echo "error: no stb headers in $stb_src (apt-get install libstb-dev)" >&2; exit 1; }
rm -rf .vendor/googletest .vendor/stb
mkdir -p .vendor/stb
cp -r "$gtest_src" .vendor/googletest
cp "$stb_src/stb_image.h" "$stb_src/stb_image_write.h" .vendor/stb/
echo "bundled $(du -sh .vendor | cut -f1) into .vendor/ (googletest from $gtest_src, stb from $stb_src)"
