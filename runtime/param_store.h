// runtime/param_store.h — the named persistent tensors of a model: parameters, buffers and
// optimiser state, in registration order (the checkpoint's order). Convolution weights are held in
// HWIO here; checkpoints convert to and from PyTorch's OIHW (runtime/checkpoint.h).
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "runtime/graph.h"
#include "runtime/tensor.h"

namespace rpp {

class ParamStore {
 public:
  bool has(const std::string& name) const { return map_.count(name) != 0; }
  Tensor& get(const std::string& name);
  const Tensor& get(const std::string& name) const;
  // Adds a tensor; the name must be new.
  Tensor& add(const std::string& name, Tensor t);
  void remove_if(const std::function<bool(const std::string&)>& pred);
  const std::vector<std::string>& names() const { return names_; }

  // Creates (zero-filled) every persistent tensor of g that the store lacks, and checks the shape
  // and dtype of those it has.
  void ensure(const Graph& g);

 private:
  std::vector<std::string> names_;
  std::map<std::string, Tensor> map_;
};

}  // namespace rpp
