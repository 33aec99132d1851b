// kernels/cpu/ops.h — reference implementations of every non-convolution op, forward and
// backward, as plain loops over NHWC float (or double, for gradient checks) buffers.
// This file is the executable specification the CUDA kernels are tested against.
//
// Conventions: `count` is N*H*W (pixels), `c` channels, so an NHWC tensor is count x c.
// Every function overwrites its outputs (no accumulation) unless it says otherwise.
// Large loops are split over the CPU pool (kernels/cpu/parallel.h) with a static partition;
// reductions are computed in a fixed order, in double, that does not depend on the thread count
// (kernels/cpu/ops_reduce.h), so results are reproducible bit for bit. Invalid sizes throw
// rpp::Error. Implemented in batchnorm.cpp, elementwise.cpp, loss.cpp and optim.cpp (float and
// double instantiations); tested by tests/test_kernels_ops.cpp.
#pragma once
#include <cstddef>
#include <cstdint>

namespace rpp::cpu {

// ---- Batch normalisation (PyTorch conventions: biased variance to normalise, unbiased variance
// in the running estimate, running = (1 - momentum) * running + momentum * batch). ----
// Training mode: normalises with batch statistics, writes save_mean and save_invstd
// (1/sqrt(var + eps), both length c) for backward, and updates running_mean/var in place
// (either may be null to skip its update). A channel whose batch mean or variance is not finite
// (a NaN or Inf in the batch) leaves its running statistics unchanged, so that a training step
// skipped for a non-finite loss does not poison the model used for evaluation. Needs count > 1.
template <class T>
void batchnorm_forward_train(int64_t count, int c, const T* x, const T* gamma, const T* beta, T* y,
                             T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                             double momentum, double eps);
// Eval mode: normalises with the running statistics.
template <class T>
void batchnorm_forward_eval(int64_t count, int c, const T* x, const T* gamma, const T* beta,
                            const T* running_mean, const T* running_var, double eps, T* y);
// The two halves of the forward, as the fused BN-ReLU-conv path uses them (batchnorm_forward_*
// is stats followed by apply, so both paths give the same bits):
// batch statistics (and the running-statistics update) without normalising;
template <class T>
void batchnorm_stats_train(int64_t count, int c, const T* x, T* save_mean, T* save_invstd,
                           T* running_mean, T* running_var, double momentum, double eps);
// eval-mode statistics: mean = running_mean, invstd = 1/sqrt(running_var + eps);
template <class T>
void batchnorm_stats_eval(int c, const T* running_mean, const T* running_var, double eps, T* mean,
                          T* invstd);
// y = (x - mean) * (gamma * invstd) + beta, then relu_forward's max(y, 0) when relu is set
// (NaN propagates either way).
template <class T>
void batchnorm_apply(int64_t count, int c, const T* x, const T* gamma, const T* beta,
                     const T* mean, const T* invstd, bool relu, T* y);
// Backward of the ReLU after a BN, without the stored ReLU output: zeroes dy wherever the
// recomputed batchnorm_apply value is not > 0 (the same mask relu_backward derives from it).
template <class T>
void bn_relu_mask_inplace(int64_t count, int c, const T* x, const T* gamma, const T* beta,
                          const T* mean, const T* invstd, T* dy);
// Backward of the training-mode forward: dx, dgamma, dbeta.
template <class T>
void batchnorm_backward(int64_t count, int c, const T* x, const T* dy, const T* gamma,
                        const T* save_mean, const T* save_invstd, T* dx, T* dgamma, T* dbeta);

// ---- Elementwise over n values ----
template <class T> void relu_forward(int64_t n, const T* x, T* y);
// dx = dy where x > 0, else 0 (x is the forward input).
template <class T> void relu_backward(int64_t n, const T* x, const T* dy, T* dx);
template <class T> void add(int64_t n, const T* a, const T* b, T* y);
// y = a * b elementwise (also the backward of itself: da = dy * b, db = dy * a).
template <class T> void mul(int64_t n, const T* a, const T* b, T* y);
template <class T> void sigmoid_forward(int64_t n, const T* x, T* y);
// dx = dy * y * (1 - y), y the forward output.
template <class T> void sigmoid_backward(int64_t n, const T* y, const T* dy, T* dx);

// ---- Per-channel scale: x (N, HW, C), s (N, C); y[n, p, c] = x[n, p, c] * s[n, c] ----
template <class T> void scale_channels(int n, int64_t hw, int c, const T* x, const T* s, T* y);
// ds[n, c] = sum_p dy[n, p, c] * x[n, p, c]  (dx is scale_channels(dy, s)).
template <class T>
void scale_channels_backward_scale(int n, int64_t hw, int c, const T* x, const T* dy, T* ds);

// ---- Global average pool: x (N, HW, C) -> y (N, C) ----
template <class T> void global_avg_pool_forward(int n, int64_t hw, int c, const T* x, T* y);
template <class T> void global_avg_pool_backward(int n, int64_t hw, int c, const T* dy, T* dx);

// ---- Linear without bias: x (N, I), w (O, I) in PyTorch layout, y (N, O) ----
template <class T> void linear_forward(int n, int in, int out, const T* x, const T* w, T* y);
template <class T>
void linear_backward(int n, int in, int out, const T* x, const T* w, const T* dy, T* dx, T* dw);

// ---- 2x2 max pool, stride 2: x (N, H, W, C) -> y (N, H/2, W/2, C); H, W even ----
// argmax, when not null: per output, the window position of the first maximum, 0..3 in the order
// (0,0), (0,1), (1,0), (1,1) (what backward needs instead of x).
template <class T> void maxpool2_forward(int n, int h, int w, int c, const T* x, T* y, uint8_t* argmax = nullptr);
// The gradient goes to the window position the forward's argmax names (the first maximum), zero
// elsewhere; h, w: the input's sizes. rpp::Error for an index that is not 0..3.
template <class T>
void maxpool2_backward(int n, int h, int w, int c, const uint8_t* argmax, const T* dy, T* dx);

// ---- 2x nearest upsample: x (N, H, W, C) -> y (N, 2H, 2W, C) ----
template <class T> void upsample2_forward(int n, int h, int w, int c, const T* x, T* y);
// dx[n, h, w, c] = sum of the four dy values it was copied to; h, w are the *input* sizes.
template <class T> void upsample2_backward(int n, int h, int w, int c, const T* dy, T* dx);

// ---- Channel concat: a (count, ca), b (count, cb) -> y (count, ca + cb), a first ----
template <class T> void concat_forward(int64_t count, int ca, int cb, const T* a, const T* b, T* y);
template <class T>
void concat_backward(int64_t count, int ca, int cb, const T* dy, T* da, T* db);

// ---- Losses on logits x and binary targets t (n values); both return the loss ----
// BCE with logits, mean over all n: mean(max(x,0) - x*t + log(1 + exp(-|x|))).
// dx = dloss * (sigmoid(x) - t) / n.
template <class T> double bce_with_logits_forward(int64_t n, const T* x, const T* t);
template <class T>
void bce_with_logits_backward(int64_t n, const T* x, const T* t, double dloss, T* dx);
// Soft Dice over the whole batch with smoothing 1: p = sigmoid(x),
// loss = 1 - (2*sum(p*t) + 1) / (sum(p) + sum(t) + 1).
template <class T> double dice_loss_forward(int64_t n, const T* x, const T* t);
template <class T> void dice_loss_backward(int64_t n, const T* x, const T* t, double dloss, T* dx);

// ---- Optimiser updates on n parameters (PyTorch semantics). Weight decay in SGD, Adam and
// Nadam is L2 (added to the gradient); in AdamW it is decoupled (w *= 1 - lr * wd). ----
struct OptimStep {
  double lr = 1e-3, momentum = 0.9, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool nesterov = false;
  int64_t step = 1;  // 1 on the first update
  // Nadam's momentum-decay schedule (PyTorch NAdam, momentum_decay = 4e-3): the host keeps
  // mu_product = prod_{i<=step} mu_i and passes mu_t, mu_{t+1}, mu_product and mu_product*mu_{t+1}.
  double nadam_mu = 0, nadam_mu_next = 0, nadam_mu_product = 1, nadam_mu_product_next = 1;
  // Global gradient-norm clipping before the updates (PyTorch clip_grad_norm_): 0 disables.
  double clip_grad_norm = 0;
};
// State buffers (buf, m, v) are not read on step 1 (PyTorch creates them there: buf = g,
// m = v = 0), so they need no initialisation.
// buf = momentum * buf + g; w -= lr * (nesterov ? g + momentum * buf : buf). On step 1 buf = g.
// With momentum == 0 this is plain SGD and buf is not used (it may be null).
template <class T> void sgd_update(int64_t n, T* w, const T* g, T* buf, const OptimStep& o);
template <class T> void adam_update(int64_t n, T* w, const T* g, T* m, T* v, const OptimStep& o);
template <class T> void adamw_update(int64_t n, T* w, const T* g, T* m, T* v, const OptimStep& o);
template <class T> void nadam_update(int64_t n, T* w, const T* g, T* m, T* v, const OptimStep& o);
// Sum of squares of n values, accumulated in double in a fixed order.
template <class T> double sum_squares(int64_t n, const T* x);
// x *= s.
template <class T> void scale_inplace(int64_t n, T* x, double s);
// Fills the Nadam fields of o for o.step given the product carried from the previous step
// (1 before the first step); the host keeps o.nadam_mu_product for the next call. nadam_update
// throws if the fields still hold their defaults (schedule never filled in).
void nadam_schedule(OptimStep& o, double mu_product_prev, double momentum_decay = 4e-3);

}  // namespace rpp::cpu
