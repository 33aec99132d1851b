// runtime/checkpoint.h — a model's persistent tensors to and from safetensors files.
//
// Names are the graph's persistent tensor names (PyTorch module paths for a model built by
// model/). 4-D tensors are convolution weights: HWIO in memory, OIHW (PyTorch) in the file.
// Optimiser state, when saved, is stored under "optim.<name>". Files are written crash-safe
// (temp file, fsync, rename) and validated in full when read.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "runtime/graph.h"
#include "runtime/param_store.h"

namespace rpp {

using Metadata = std::vector<std::pair<std::string, std::string>>;

// Writes every Param and Buffer of g (and, with optimizer, every OptState) from store.
void save_checkpoint(const std::string& path, const Graph& g, const ParamStore& store, bool optimizer,
                     Metadata metadata);

// Reads a checkpoint into store: every Param and Buffer of g must be present with the right dtype
// and shape; unexpected tensors are an error (optimiser state is accepted and loaded only when
// `optimizer` is true, and then required). The store is modified only if the whole file is valid.
// Returns the file's metadata. Errors name the file and every problem found (up to a limit).
Metadata load_checkpoint(const std::string& path, const Graph& g, ParamStore& store, bool optimizer);
Metadata load_checkpoint_from_memory(const uint8_t* data, size_t size, const std::string& label,
                                     const Graph& g, ParamStore& store, bool optimizer);

// OIHW <-> HWIO for a 4-D float tensor.
Tensor oihw_to_hwio(const Tensor& t);
Tensor hwio_to_oihw(const Tensor& t);

}  // namespace rpp
