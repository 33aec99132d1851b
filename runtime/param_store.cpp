// runtime/param_store.cpp
#include "runtime/param_store.h"

#include <algorithm>

namespace rpp {

Tensor& ParamStore::get(const std::string& name) {
  auto it = map_.find(name);
  if (it == map_.end()) fail("no tensor named '", name, "' in the model");
  return it->second;
}

const Tensor& ParamStore::get(const std::string& name) const {
  auto it = map_.find(name);
  if (it == map_.end()) fail("no tensor named '", name, "' in the model");
  return it->second;
}

Tensor& ParamStore::add(const std::string& name, Tensor t) {
  if (has(name)) fail("tensor '", name, "' registered twice");
  names_.push_back(name);
  return map_[name] = std::move(t);
}

void ParamStore::remove_if(const std::function<bool(const std::string&)>& pred) {
  std::vector<std::string> keep;
  for (const std::string& n : names_) {
    if (pred(n))
      map_.erase(n);
    else
      keep.push_back(n);
  }
  names_ = std::move(keep);
}

void ParamStore::ensure(const Graph& g) {
  for (const TensorInfo& t : g.tensors()) {
    if (!is_persistent(t.kind)) continue;
    if (!has(t.name)) {
      add(t.name, Tensor(t.dtype, t.shape));
      continue;
    }
    const Tensor& have = get(t.name);
    if (have.shape() != t.shape || have.dtype() != t.dtype)
      fail("tensor '", t.name, "' is ", dtype_name(have.dtype()), " ", shape_str(have.shape()),
           " but the graph needs ", dtype_name(t.dtype), " ", shape_str(t.shape));
  }
}

}  // namespace rpp
