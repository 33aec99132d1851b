// tests/emu/cuda_runtime.h — the CPU emulator stands in for the CUDA runtime header (tests/emu/cuda_emu.h).
#pragma once
#include "cuda_emu.h"
