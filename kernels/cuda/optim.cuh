// kernels/cuda/optim.cuh — optimiser updates and global gradient-norm clipping on the GPU, fp32:
// SGD (momentum, Nesterov), Adam, AdamW and NAdam with the formulas of kernels/cpu/optim.cpp
// (PyTorch semantics), plus sum_squares / clip factor / scale_inplace. Implemented in optim.cu;
// tested against the CPU reference by tests/gpu/test_ops_gpu.cpp.
//
// Step-dependent scalars come from a device struct. The host keeps one OptimStepDevice in device
// memory and, before each step (each replay of a captured CUDA graph), fills it with
//   OptimStepDevice h = make_optim_step_device(step);            // step: rpp::cpu::OptimStep
//   cudaMemcpyAsync(d_step, &h, sizeof h, cudaMemcpyHostToDevice, stream);
// from memory that stays valid until the copy has run (pinned memory for a truly asynchronous
// copy). The kernels read every scalar through the pointer, so the captured launches stay valid.
// Per-element arithmetic is float; the scalars are computed in double on the host, then rounded.
//
// Clipping keeps everything on the device (norm included) so the whole step can be captured:
//   sum_squares(n0, g0, d_sumsq, false, ws, s); sum_squares(n1, g1, d_sumsq, true, ws, s); ...
//   clip_grad_norm_factor(d_sumsq, d_step, d_norm, d_factor, s);
//   scale_inplace(n0, g0, d_factor, s); scale_inplace(n1, g1, d_factor, s); ...
// Launchers never synchronise and never allocate.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/ops.h"

namespace rpp::cuda {

// Everything the update kernels read per step (device memory, filled by the host).
struct OptimStepDevice {
  // Doubles: the kernels compute each element's update in double, as the CPU reference does
  // (memory-bound kernels: the arithmetic costs nothing), and round only what they store.
  double lr;               // learning rate of this step
  double momentum;         // SGD momentum (0: plain SGD, the buffer is not touched)
  double beta1, beta2;     // Adam-family moment decays
  double one_minus_beta1;  // 1 - beta1
  double one_minus_beta2;  // 1 - beta2
  double eps;
  double weight_decay;         // L2 (SGD, Adam, NAdam) or decoupled (AdamW)
  double adam_step_size;       // lr / (1 - beta1^t)
  double adam_bc2_sqrt;        // sqrt(1 - beta2^t)
  double adamw_decay;          // 1 - lr * weight_decay
  double nadam_bc2;            // 1 - beta2^t
  double nadam_grad_coef;      // lr (1 - mu_t) / (1 - mu_product); NaN if the schedule is unset
  double nadam_momentum_coef;  // lr mu_{t+1} / (1 - mu_product mu_{t+1}); NaN if unset
  int32_t first_step;          // 1 on step 1: state buffers are written, not read
  int32_t nesterov;            // 1: Nesterov momentum (SGD)
  double clip_max_norm;        // global gradient-norm limit; 0 disables clipping
  // 0 from the host; set to 1 on the device by skip_if_nonfinite (below) when this step's loss or
  // gradient norm is not finite. The update kernels then leave weights and state untouched.
  int32_t skip;
  int32_t reserved;
};

// Fills the struct from the CPU step description (throws rpp::Error for a step < 1 or Nesterov
// without momentum). For NAdam, call rpp::cpu::nadam_schedule on `o` first, as on the CPU.
OptimStepDevice make_optim_step_device(const rpp::cpu::OptimStep& o);

// w, g, and the state buffers are n floats each. State buffers need no initialisation: they are
// not read on the first step. sgd_update with buf == null, or momentum 0, is plain SGD. With
// step->skip set, every update returns without touching memory.
void sgd_update(int64_t n, float* w, const float* g, float* buf, const OptimStepDevice* step,
                cudaStream_t stream);
void adam_update(int64_t n, float* w, const float* g, float* m, float* v,
                 const OptimStepDevice* step, cudaStream_t stream);
void adamw_update(int64_t n, float* w, const float* g, float* m, float* v,
                  const OptimStepDevice* step, cudaStream_t stream);
void nadam_update(int64_t n, float* w, const float* g, float* m, float* v,
                  const OptimStepDevice* step, cudaStream_t stream);

// *result (one device double) = sum of x[i]^2 (plus its previous value with accumulate), in
// double with a fixed partition and combine order. Workspace: sum_squares_workspace_bytes(n).
size_t sum_squares_workspace_bytes(int64_t n);
void sum_squares(int64_t n, const float* x, double* result, bool accumulate, void* workspace,
                 cudaStream_t stream);

// One thread: *norm = sqrt(*sum_sq); *factor = clip_max_norm / (norm + 1e-6) when
// clip_max_norm > 0 and norm > clip_max_norm, else exactly 1 (the PyTorch clip_grad_norm_ rule
// the CPU executor applies). norm and factor are device doubles.
void clip_grad_norm_factor(const double* sum_sq, const OptimStepDevice* step, double* norm,
                           double* factor, cudaStream_t stream);

// One thread: step->skip = 1 when *sum_sq (the squared global gradient norm) or *loss (may be
// null) is NaN or infinite, else 0. Run it after the norm and before the updates: the updates of
// a non-finite step then do nothing (weights, momentum and moments unchanged), with no host
// synchronisation, inside a captured graph too.
void skip_if_nonfinite(const double* sum_sq, const float* loss, OptimStepDevice* step, cudaStream_t stream);

// x *= float(*factor), factor a device double. A factor of exactly 1 (no clipping this step)
// returns without touching x.
void scale_inplace(int64_t n, float* x, const double* factor, cudaStream_t stream);

}  // namespace rpp::cuda
