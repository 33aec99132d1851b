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
# With BUNDLE_DATA=DIR it also copies a dataset folder (images/, masks/, splits/) to
# .vendor/data/<name of DIR>, for accuracy runs on a server that cannot reach it (Kvasir-SEG is
# about 55 MB; check what your transfer allows).
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
if [ -n "${BUNDLE_DATA:-}" ]; then
  [ -d "$BUNDLE_DATA/images" ] && [ -d "$BUNDLE_DATA/masks" ] || { echo "error: $BUNDLE_DATA has no images/ and masks/" >&2; exit 1; }
  name=$(basename "$BUNDLE_DATA")
  rm -rf ".vendor/data/$name"
  mkdir -p .vendor/data
  cp -r "$BUNDLE_DATA" ".vendor/data/$name"
fi
echo "bundled $(du -sh .vendor | cut -f1) into .vendor/ (googletest from $gtest_src, stb from $stb_src)"
