#!/usr/bin/env bash
# tools/install_deps.sh — installs what the build needs on a Debian/Ubuntu machine, if missing:
# a C++17 compiler, CMake, Ninja, make and pkg-config (for the installed-package test),
# GoogleTest and the stb headers. The CUDA toolkit is optional
# and never installed here. Safe to run repeatedly; does nothing when everything is present.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v ninja >/dev/null 2>&1 || need+=(ninja-build)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -f /usr/include/stb/stb_image.h ] || [ -n "${RESUNETPP_STB_DIR:-}" ] || need+=(libstb-dev)
[ -f /usr/include/gtest/gtest.h ] || [ -n "${RESUNETPP_GTEST_SOURCE_DIR:-}" ] || need+=(libgtest-dev)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "error: missing ${need[*]} and not root (install them, or run as root)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
