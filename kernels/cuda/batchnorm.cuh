// kernels/cuda/batchnorm.cuh — BatchNorm over NHWC fp32 buffers on the GPU (count = N*H*W rows
// of c channels): training forward, eval forward, training-mode backward. Same semantics and
// argument order as rpp::cpu::batchnorm_* (kernels/cpu/ops.h), plus a workspace and a stream.
// Implemented in batchnorm.cu; tested against the CPU reference by tests/gpu/test_ops_gpu.cpp.
//
// bf16 overloads (kernels/cuda/storage.cuh; bf16 mixed-precision training): x, and y where the op
// writes an activation, in bf16; statistics, parameters and gradients (dy, dx, dgamma, dbeta) stay
// fp32. Each x is widened exactly to fp32 and the fp32 version's device code runs on it, so every
// fp32 output has the bits of the fp32 launcher on the widened x, and a bf16 y is the fp32
// launcher's y rounded to bf16 (nearest even): the per-element double is rounded to fp32 first,
// then to bf16 (a double rounding, kept so that bf16 y == bf16(fp32 y) holds exactly).
// Tested bit for bit in tests/gpu/test_bf16_train_ops_gpu.cpp (and eval in test_bf16_gpu.cpp).
//
// Launchers take device pointers, never synchronise and never allocate. Per-channel sums are
// deterministic (fixed partition and combine order, no float atomics): the same inputs give the
// same bits on every run. Limits: 1 <= c <= 2048 (per-channel tables live in shared memory).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/storage.cuh"

namespace rpp::cuda {

// Device workspace (bytes, a multiple of 256) needed by batchnorm_forward_train and
// batchnorm_backward for these sizes; 16-byte alignment required. Its contents need no
// initialisation and are scratch only.
size_t batchnorm_workspace_bytes(int64_t count, int c);

// Training mode: y from batch statistics; writes save_mean and save_invstd (1/sqrt(var + eps),
// length c) and updates running_mean/var in place (either may be null: no update). count > 1.
// The bf16 version: statistics (and running update) of the widened x, bit for bit as the fp32
// version on it; y is the fp32 version's y rounded to bf16.
void batchnorm_forward_train(int64_t count, int c, const float* x, const float* gamma,
                             const float* beta, float* y, float* save_mean, float* save_invstd,
                             float* running_mean, float* running_var, double momentum, double eps,
                             void* workspace, cudaStream_t stream);
void batchnorm_forward_train(int64_t count, int c, const bf16* x, const float* gamma,
                             const float* beta, bf16* y, float* save_mean, float* save_invstd,
                             float* running_mean, float* running_var, double momentum, double eps,
                             void* workspace, cudaStream_t stream);

// Eval mode: normalises with the running statistics. Needs no workspace. The bf16 version loads
// x as fp32 and rounds the fp32 result of the same arithmetic to bf16 (nearest even).
void batchnorm_forward_eval(int64_t count, int c, const float* x, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            double eps, float* y, cudaStream_t stream);
void batchnorm_forward_eval(int64_t count, int c, const bf16* x, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            double eps, bf16* y, cudaStream_t stream);

// Backward of the training-mode forward: dx, dgamma, dbeta (all overwritten). The bf16 version
// reads a bf16 saved x (widened); dy, dx stay fp32: the fp32 version's bits on the widened x.
void batchnorm_backward(int64_t count, int c, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta, void* workspace, cudaStream_t stream);
void batchnorm_backward(int64_t count, int c, const bf16* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta, void* workspace, cudaStream_t stream);

// batchnorm_backward's elementwise pass alone, for per-channel sums that a producer computed
// (c doubles each, over the count rows of dy), e.g. the fused backward-data conv's epilogue
// (bn_relu_conv_backward_data_with_sums, bn_relu_conv_bwd.cuh):
//   sum_dy[c] = sum dy,   sum_dy_xhat[c] = sum dy * xhat, xhat = (x - save_mean) * save_invstd
// (batchnorm_backward forms the latter as (sum dy * (x - mean)) * invstd, in double). Writes
// dbeta = float(sum_dy), dgamma = float(sum_dy_xhat) and dx with batchnorm_backward's per-element
// arithmetic (the same device code): the two agree up to the rounding of the sums. dx may be dy.
// Needs no workspace; count > 1. The bf16 version: bf16 x (widened), fp32 dy and dx (dx may be dy).
void batchnorm_backward_from_sums(int64_t count, int c, const float* x, const float* dy, const float* gamma,
                                  const float* save_mean, const float* save_invstd, const double* sum_dy,
                                  const double* sum_dy_xhat, float* dx, float* dgamma, float* dbeta,
                                  cudaStream_t stream);
void batchnorm_backward_from_sums(int64_t count, int c, const bf16* x, const float* dy, const float* gamma,
                                  const float* save_mean, const float* save_invstd, const double* sum_dy,
                                  const double* sum_dy_xhat, float* dx, float* dgamma, float* dbeta,
                                  cudaStream_t stream);

// The halves of the forward for the fused BN-ReLU-conv path (cpu::batchnorm_stats_train,
// batchnorm_stats_eval, batchnorm_apply, bn_relu_mask_inplace): statistics only (same workspace
// as the training forward); eval statistics from the running ones; the normalisation from saved
// statistics, optionally rectified, into y; and the ReLU mask recomputed from x applied to dy.
// batchnorm_stats_train also reads a bf16 x (widened: the fp32 version's bits on it).
void batchnorm_stats_train(int64_t count, int c, const float* x, float* save_mean,
                           float* save_invstd, float* running_mean, float* running_var,
                           double momentum, double eps, void* workspace, cudaStream_t stream);
void batchnorm_stats_train(int64_t count, int c, const bf16* x, float* save_mean,
                           float* save_invstd, float* running_mean, float* running_var,
                           double momentum, double eps, void* workspace, cudaStream_t stream);
// batchnorm_stats_train of x = concat(upsample2(a), b) (n, h, w, c), read in place (a view:
// view_upsample_concats, runtime/fusion.h): a (n, h/2, w/2, ca), b (n, h, w, c - ca), one storage;
// h and w even, 0 < ca < c. Every value is read where the stored concatenation holds it, in the
// same order: the same bits as batchnorm_stats_train on that tensor, with its workspace
// (count n * h * w).
void batchnorm_stats_train_upsample_concat(int n, int h, int w, int ca, int c, const float* a, const float* b,
                                           float* save_mean, float* save_invstd, float* running_mean,
                                           float* running_var, double momentum, double eps, void* workspace,
                                           cudaStream_t stream);
void batchnorm_stats_train_upsample_concat(int n, int h, int w, int ca, int c, const bf16* a, const bf16* b,
                                           float* save_mean, float* save_invstd, float* running_mean,
                                           float* running_var, double momentum, double eps, void* workspace,
                                           cudaStream_t stream);
// batchnorm_apply of x = concat(upsample2(a), b), read in place as above: the same bits as on the
// stored concatenation (the cuDNN path of a fused BN-ReLU-conv whose input is a view stages
// BN-ReLU(x) this way).
void batchnorm_apply_upsample_concat(int n, int h, int w, int ca, int c, const float* a, const float* b,
                                     const float* gamma, const float* beta, const float* mean, const float* invstd,
                                     bool relu, float* y, cudaStream_t stream);
void batchnorm_apply_upsample_concat(int n, int h, int w, int ca, int c, const bf16* a, const bf16* b,
                                     const float* gamma, const float* beta, const float* mean, const float* invstd,
                                     bool relu, float* y, cudaStream_t stream);
void batchnorm_stats_eval(int c, const float* running_mean, const float* running_var, double eps,
                          float* mean, float* invstd, cudaStream_t stream);
// batchnorm_stats_train's outputs from per-channel sums (c doubles each, over count values) that a
// producer computed, e.g. the tensor-core conv's epilogue (bn_relu_conv_tc.cuh): one-pass
// variance E[x^2] - mean^2 in double, clamped at 0; same running update and non-finite rule.
void batchnorm_stats_from_sums(int64_t count, int c, const double* sum, const double* sumsq, float* save_mean,
                               float* save_invstd, float* running_mean, float* running_var, double momentum,
                               double eps, cudaStream_t stream);
// y = bn(x) (rectified when relu) in fp32. The bf16 version reads a bf16 x (widened): the fp32
// version's bits on it (the cuDNN path of a bf16 graph stages BN-ReLU(x) in fp32 this way).
void batchnorm_apply(int64_t count, int c, const float* x, const float* gamma, const float* beta,
                     const float* mean, const float* invstd, bool relu, float* y,
                     cudaStream_t stream);
void batchnorm_apply(int64_t count, int c, const bf16* x, const float* gamma, const float* beta,
                     const float* mean, const float* invstd, bool relu, float* y,
                     cudaStream_t stream);
// Training, the ASPP block's normalise-and-add (the BnApplySum node): y = bn_0(x_0) + bn_1(x_1) +
// ..., over 1 to kBnSumMaxBranches branches of count x c values, bn_b(x) = (x - mean_b) *
// (gamma_b * invstd_b) + beta_b from saved statistics. Each term is computed as batchnorm_apply
// computes it (double, rounded once) and the terms are added in fp32 in branch order, as add()
// would: the same bits as the unfused applies and adds. c * branches <= 2048 (the per-channel
// tables in shared memory). `storage` is the type of every branch's x and of y (the float* form:
// Storage::F32). bf16: each x widened, the terms and their fp32 sum as for fp32 storage, the sum
// rounded once to bf16 (so y is the fp32 form's y on the widened x, rounded to nearest even).
constexpr int kBnSumMaxBranches = 4;
struct BnSumBranch {
  const void* x = nullptr;  // const float* or const bf16*, as the launch's storage says
  const float* gamma = nullptr;
  const float* beta = nullptr;
  const float* mean = nullptr;
  const float* invstd = nullptr;
};
void batchnorm_apply_sum(int64_t count, int c, const BnSumBranch* branches, int nb, float* y, cudaStream_t stream);
void batchnorm_apply_sum(int64_t count, int c, const BnSumBranch* branches, int nb, Storage storage, void* y,
                         cudaStream_t stream);
// dy = 0 where bn(x) is not > 0 (the ReLU mask of a fused BN-ReLU-conv's input gradient), in
// place. The bf16 version reads a bf16 x (widened).
void bn_relu_mask_inplace(int64_t count, int c, const float* x, const float* gamma,
                          const float* beta, const float* mean, const float* invstd, float* dy,
                          cudaStream_t stream);
void bn_relu_mask_inplace(int64_t count, int c, const bf16* x, const float* gamma,
                          const float* beta, const float* mean, const float* invstd, float* dy,
                          cudaStream_t stream);

// ++*num_batches_tracked on the device (PyTorch's counter, incremented by every training-mode
// step), so that a captured CUDA graph keeps counting when replayed.
void batchnorm_count_batch(int64_t* num_batches_tracked, cudaStream_t stream);

}  // namespace rpp::cuda
