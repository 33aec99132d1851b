// runtime/fusion.h — graph rewrites that fuse op chains into single nodes, before autodiff (and
// one after it: the ASPP's backward-data sum), and the two memory passes that run after autodiff
// (recompute_for_backward, sink_backward_nodes).
//
// BN -> ReLU -> Conv becomes BatchNormStats (the BN's batch or running statistics) followed by
// BnReluConv2d, which normalises, rectifies and zero-pads its input on the fly. Autodiff then emits
// BnReluConv2dBwdData (conv dgrad with the ReLU mask recomputed from the pre-BN input),
// BatchNormBwd and BnReluConv2dBwdFilter (wgrad on the recomputed BN-ReLU input). Neither the BN
// output nor the ReLU output is stored: only the pre-BN tensor is kept for backward, which is
// where the memory saving comes from.
//
// On the CPU the fused nodes give the same bits as the unfused chain (kernels/cpu/ops.h: the
// forward BN is batchnorm_stats_* followed by batchnorm_apply). Executors run them with whatever
// kernels they have; the planner's kernel choice (docs/design.md) picks among them per node.
#pragma once
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace rpp {

struct FusionReport {
  int bn_relu_conv = 0;            // chains fused
  std::vector<std::string> names;  // "bn scope -> conv scope" of each fused chain
};

// Rewrites every BN -> ReLU -> Conv chain of the forward graph g whose BN output feeds only the
// ReLU and whose ReLU output feeds only the conv (as its input, not as a weight), and neither is a
// graph output. Must run before autodiff (throws if g already has backward nodes).
FusionReport fuse_bn_relu_conv(Graph& g);

// Rewrites every squeeze-and-excitation MLP, Linear(p, w1) -> ReLU -> Linear(., w2) -> Sigmoid with
// no intermediate read elsewhere or a graph output, into one SeExcite node (autodiff then emits
// one SeExciteBwd, which recomputes the ReLU output). Returns the number rewritten. On the CPU the
// fused node runs the same kernels in the same order, so results are bit-identical. Must run
// before autodiff.
int fuse_se_excite(Graph& g);

// Rewrites every Add whose one operand is the output of a forward convolution (Conv2d or
// BnReluConv2d) read by nothing else and not a graph output into that convolution with the other
// operand as its residual input (residual_input(), graph.h): the node computes conv + r, in fp32
// as the add does, and takes the add's place in the schedule (every input of the convolution is
// ready there). The convolution's own output never exists; in a training graph it was never
// needed (the add has no backward node, and autodiff gives r the convolution's output gradient).
// ResUNet++: the residual blocks' c1 + c2 and the attention gates' g_conv + x_conv, 10 adds. On
// the CPU the fused node runs the convolution, then the same add: the same bits. Returns the
// fused adds' names. Must run before autodiff, after fuse_bn_relu_conv.
std::vector<std::string> fuse_conv_add(Graph& g);

// Rewrites every MaxPool2 whose input is the output of a forward convolution (Conv2d or
// BnReluConv2d without a residual) read by nothing else and not a graph output into that
// convolution with conv.max_pool set: the node's outputs become the pool's (the pooled y and, in
// training, its argmax), at the pool's place in the schedule. The full-resolution convolution
// output never exists as a tensor (a CUDA tensor-core kernel pools in its epilogue; other paths
// use the workspace). Autodiff emits the pool's backward (from the argmax) into a fresh
// full-resolution gradient, then the convolution's backward. ResUNet++: the three attention gates'
// skip-branch convolutions (g_conv). On the CPU the fused node runs the convolution into the
// workspace, then the same pool: the same bits. Returns the fused pools' names. Must run before
// autodiff, after fuse_bn_relu_conv and fuse_conv_add.
std::vector<std::string> fuse_conv_pool(Graph& g);

// Rewrites every Mul one of whose operands is the output of a forward convolution (Conv2d or
// BnReluConv2d without a residual, a pool or a multiplier) read by nothing else and not a graph
// output, into that convolution with conv.multiply set and the other operand (of the same shape
// and dtype) as its multiplier, at the Mul's place: out[0] = conv * m. An inference graph's
// convolution output never exists; a training graph keeps it as out[1], which the product's
// backward reads, as the Mul's did. Autodiff emits the Mul's two gradient products, then the
// convolution's backward. ResUNet++: the attention gates' final gc_conv(...) * x. On the CPU the
// fused node runs the convolution, then the same mul: the same bits. Returns the fused Muls'
// names. Must run before autodiff, after fuse_bn_relu_conv.
std::vector<std::string> fuse_conv_mul(Graph& g);

// Rewrites every Concat whose first operand is the output of an Upsample2 read by nothing else
// and not a graph output into one UpsampleConcat node (at the concat's place) that reads the
// upsample's input directly: the upsampled tensor never exists, forward or (UpsampleConcatBwd)
// backward. ResUNet++: the three decoder blocks. On the CPU the fused nodes run the upsample (or
// its backward) through the workspace and the same concat: the same bits. Returns the fused
// concats' names. Must run before autodiff.
std::vector<std::string> fuse_upsample_concat(Graph& g);

// Marks an UpsampleConcat as a view (Node::view) when its output is an activation, not a graph
// output, and read only as the input x (in[0]) of forward BatchNormStats, BnReluConv2d and Conv2d
// nodes: the concatenation is then never stored. Its readers compute x[n, y, x, c] from the
// inputs, upsampled part (c < Ca) or skip, at each load; the planner gives it no bytes and keeps
// the inputs alive until its last reader. Run last: after autodiff and recompute_for_backward in a
// training graph (whose backward readers read the recomputed copy, which stays stored), after the
// other fusions in an inference graph. ResUNet++: the three decoder blocks' inputs, read by their
// first BN's statistics, its BN-ReLU-conv and the 1x1 shortcut. Returns the views' names.
std::vector<std::string> view_upsample_concats(Graph& g);

// Inference: rewrites every left-deep sum ((y1 + y2) + y3) + ... of 2 to 4 terms y_i = bn_i(conv_i(x))
// (eval-mode BNs; convolutions of one input x with biases, the same n, h, w, cin, cout, kernel,
// stride and output size, padding and dilation free: the ASPP block) into one ConvBnSum node, when
// no intermediate tensor has another reader or is a graph output. The branch outputs, the BN
// outputs and the partial sums then never exist. Returns the names of the fused sums (the last
// add's name and the branch count). Must run before autodiff; training-mode BNs never match.
std::vector<std::string> fuse_conv_bn_sum(Graph& g);

// Training: rewrites every left-deep sum of 2 to 4 training-mode BN outputs (the ASPP block's
// branches), none read elsewhere, into BatchNormStats nodes (the BNs' batch statistics and running
// updates, in place of the BNs) and one BnApplySum node that normalises every branch and adds them
// up in one pass. The BN outputs and partial sums never exist. Autodiff emits the BNs' ordinary
// BatchNormBwd nodes, so gradients are bit-identical on the CPU. Returns the fused sums' names.
std::vector<std::string> fuse_bn_apply_sum(Graph& g);

// Training, after autodiff (append_backward calls it): the backward half of the fused ASPP. The
// input gradient of an ASPP block is a left-deep sum of its branches' Conv2dBwdData outputs
// (autodiff's gradient accumulation); where the branch convolutions are those of a BnApplySum
// (fuse_bn_apply_sum ran on the forward) and differ only in padding and dilation, the 2 to 4
// backward-data nodes and their adds become one ConvSumBwdData node, so the branch gradients and
// partial sums never exist. It does nothing to a graph whose forward was not fused (the CPU's).
// On the CPU the node runs each branch's backward-data and the adds in the chain's order: the same
// bits as before. Returns the fused nodes' names ("b1 (4 branches)").
std::vector<std::string> fuse_aspp_backward_data(Graph& g);

// Runs after autodiff: a forward value that backward reads and that one cheap, exact node makes
// (ScaleChannels, UpsampleConcat, Concat, Upsample2: copies or one product per element) is made
// again just before its first backward reader, which then reads the copy. The forward value then
// dies after its last forward reader instead of living through the end of the forward, where a
// training step's memory peaks. A value is remade only where the inputs whose lives the copy
// extends cost less than half its bytes (the SE's scale: nothing, as its backward keeps x and s;
// an upsample-concat: its small upsampled input). Later values are considered first, so that a
// copy reads the copies of its inputs where those are remade too. Every remade op gives the same
// bits as the forward one, so training is bit-identical. Returns the remade values' names.
std::vector<std::string> recompute_for_backward(Graph& g);

// Runs after autodiff (and recompute_for_backward): moves a backward node whose outputs are first
// read several nodes later to just before that reader, when its outputs have more bytes than the
// inputs whose last reader it was (those then live longer). The node order stays a valid schedule
// (every tensor is written once, before its readers), and no value changes: only lifetimes do. In
// a residual block this delays the shortcut's backward-data until its gradient is added to the
// main path's. Returns the number of nodes moved.
int sink_backward_nodes(Graph& g);

// bf16 mixed precision: marks every activation tensor of rank 4 (N, H, W, C) that is neither a
// graph input nor an output nor read by the loss as stored in bf16 (TensorInfo::dtype = BF16).
// Images, masks, logits, per-channel vectors (SE), BN statistics, every gradient (TensorKind::
// Gradient) and every persistent tensor (parameters, fp32 master weights, optimiser state) stay
// fp32; all arithmetic stays fp32 or wider (kernels/cuda/storage.cuh). Works on inference and
// training graphs alike: in training the forward values saved for backward are bf16, the
// gradients fp32. Plans made afterwards size the marked tensors at 2 bytes per element. Only the
// CUDA executor runs such a graph (its check_storage names any node without a bf16 kernel, e.g. the
// unfused graph's ReLU backward). Returns the number of tensors marked.
int store_activations_in_bf16(Graph& g);

}  // namespace rpp
