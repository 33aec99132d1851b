// runtime/checkpoint.cpp
#include "runtime/checkpoint.h"

#include <cstring>
#include <sstream>

#include "runtime/safetensors.h"

namespace rpp {

static const char* kOptimPrefix = "optim.";

Tensor hwio_to_oihw(const Tensor& t) {
  const Shape& s = t.shape();  // (KH, KW, I, O)
  RPP_CHECK(s.size() == 4 && t.dtype() == DType::F32);
  const int64_t kh = s[0], kw = s[1], ci = s[2], co = s[3];
  Tensor r = Tensor::f32({co, ci, kh, kw});
  const float* a = t.f();
  float* b = r.f();
  for (int64_t y = 0; y < kh; ++y)
    for (int64_t x = 0; x < kw; ++x)
      for (int64_t i = 0; i < ci; ++i)
        for (int64_t o = 0; o < co; ++o) b[((o * ci + i) * kh + y) * kw + x] = a[((y * kw + x) * ci + i) * co + o];
  return r;
}

Tensor oihw_to_hwio(const Tensor& t) {
  const Shape& s = t.shape();  // (O, I, KH, KW)
  RPP_CHECK(s.size() == 4 && t.dtype() == DType::F32);
  const int64_t co = s[0], ci = s[1], kh = s[2], kw = s[3];
  Tensor r = Tensor::f32({kh, kw, ci, co});
  const float* a = t.f();
  float* b = r.f();
  for (int64_t o = 0; o < co; ++o)
    for (int64_t i = 0; i < ci; ++i)
      for (int64_t y = 0; y < kh; ++y)
        for (int64_t x = 0; x < kw; ++x) b[((y * kw + x) * ci + i) * co + o] = a[((o * ci + i) * kh + y) * kw + x];
  return r;
}

static Shape file_shape(const TensorInfo& t) {
  if (t.shape.size() == 4) return {t.shape[3], t.shape[2], t.shape[0], t.shape[1]};
  return t.shape;
}

void save_checkpoint(const std::string& path, const Graph& g, const ParamStore& store, bool optimizer,
                     Metadata metadata) {
  std::vector<Tensor> converted;  // keeps the OIHW copies alive until written
  std::vector<StTensorView> views;
  std::vector<std::string> names;
  converted.reserve(size_t(g.num_tensors()));
  for (const TensorInfo& t : g.tensors()) {
    if (!is_persistent(t.kind)) continue;
    if (t.kind == TensorKind::OptState && !optimizer) continue;
    const Tensor& v = store.get(t.name);
    const std::string name = t.kind == TensorKind::OptState ? kOptimPrefix + t.name : t.name;
    if (v.shape().size() == 4) {
      converted.push_back(hwio_to_oihw(v));
      views.push_back({name, DType::F32, converted.back().shape(), converted.back().raw()});
    } else {
      views.push_back({name, v.dtype(), v.shape(), v.raw()});
    }
  }
  write_safetensors(path, views, std::move(metadata));
}

static Metadata load_from(const StFile& f, const std::string& label, const Graph& g, ParamStore& store,
                          bool optimizer) {
  std::vector<std::string> problems;
  std::vector<std::pair<std::string, const StTensor*>> found;  // store name -> file tensor
  std::vector<std::string> wanted_file_names;
  for (const TensorInfo& t : g.tensors()) {
    if (!is_persistent(t.kind)) continue;
    if (t.kind == TensorKind::OptState && !optimizer) continue;
    const std::string fname = t.kind == TensorKind::OptState ? kOptimPrefix + t.name : t.name;
    wanted_file_names.push_back(fname);
    const StTensor* st = f.find(fname);
    const Shape want = file_shape(t);
    if (!st) {
      std::ostringstream os;
      os << "missing tensor '" << fname << "' (" << dtype_name(t.dtype) << " " << shape_str(want) << ")";
      problems.push_back(os.str());
      continue;
    }
    if (st->dtype != t.dtype || st->shape != want) {
      std::ostringstream os;
      os << "tensor '" << fname << "' is " << dtype_name(st->dtype) << " " << shape_str(st->shape)
         << " but the model needs " << dtype_name(t.dtype) << " " << shape_str(want);
      problems.push_back(os.str());
      continue;
    }
    found.push_back({t.name, st});
  }
  for (const StTensor& st : f.tensors) {
    bool known = false;
    for (const std::string& w : wanted_file_names) known = known || w == st.name;
    const bool optim_state = st.name.compare(0, 6, kOptimPrefix) == 0;
    if (!known && !(optim_state && !optimizer)) problems.push_back("unexpected tensor '" + st.name + "'");
  }
  if (!problems.empty()) {
    std::ostringstream os;
    os << label << ": checkpoint does not match this model (" << problems.size() << " problem"
       << (problems.size() > 1 ? "s" : "") << "):";
    for (size_t i = 0; i < problems.size() && i < 8; ++i) os << "\n  " << problems[i];
    if (problems.size() > 8) os << "\n  ... and " << problems.size() - 8 << " more";
    throw Error(os.str());
  }
  // Copy into the existing storage: executors hold pointers to it.
  store.ensure(g);
  for (auto& [name, st] : found) {
    Tensor t(st->dtype, st->shape);
    std::memcpy(t.raw(), st->bytes.data(), t.nbytes());
    if (t.shape().size() == 4) t = oihw_to_hwio(t);
    Tensor& dst = store.get(name);
    std::memcpy(dst.raw(), t.raw(), t.nbytes());
  }
  return f.metadata;
}

Metadata load_checkpoint(const std::string& path, const Graph& g, ParamStore& store, bool optimizer) {
  StFile f = read_safetensors(path);
  return load_from(f, path, g, store, optimizer);
}

Metadata load_checkpoint_from_memory(const uint8_t* data, size_t size, const std::string& label,
                                     const Graph& g, ParamStore& store, bool optimizer) {
  StFile f = parse_safetensors(data, size, label);
  return load_from(f, label, g, store, optimizer);
}

}  // namespace rpp
