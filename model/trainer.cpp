// model/trainer.cpp — the training loop, validation, schedules, resume and run-folder outputs.
#include "model/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <sstream>

#include "kernels/cpu/parallel.h"
#include "model/augment.h"
#include "model/loader.h"
#include "model/plot.h"
#include "runtime/autodiff.h"
#include "runtime/checkpoint.h"
#include "runtime/executor_cuda.h"
#include "runtime/fileio.h"
#include "runtime/fusion.h"
#include "runtime/json.h"
#include "runtime/rng.h"

namespace rpp {

namespace {

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string fmt(double v, int prec = 6) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", prec, v);
  return buf;
}

// Everything needed to continue a run exactly; stored in checkpoint_last's metadata.
struct RunState {
  int next_epoch = 1;           // epoch to run next (1-based)
  int64_t next_step_in_epoch = 0;
  int64_t step = 0;             // global steps done (skipped ones included)
  int64_t opt_steps = 0;        // optimiser updates applied (the Adam/NAdam step count)
  int64_t skipped = 0;          // steps skipped for a non-finite loss or gradient, in all
  int consecutive_skipped = 0;  // of them, in a row up to now
  double epoch_loss_sum = 0;    // of the partially done epoch (finite steps)
  int64_t epoch_steps = 0;
  int64_t epoch_skipped = 0;
  double mu_product = 1.0;      // Nadam
  PlateauState plateau;
  double best_dice = -1;
  int best_epoch = 0;
  int epochs_since_best = 0;
  bool finished = false;        // all epochs done, or stopped early: --resume has nothing to do
};

Metadata run_metadata(const TrainOptions& o, const RunState& st) {
  return {{"model", "resunetpp"},
          {"filters", filters_string(o.model.filters)},
          {"in_channels", std::to_string(o.model.in_channels)},
          {"size", std::to_string(o.size)},
          {"optimizer", optimizer_name(o.optimizer)},
          {"loss", loss_name(o.loss)},
          {"seed", std::to_string(o.seed)},
          {"val_fraction", fmt(o.val_fraction, 17)},
          {"test_fraction", fmt(o.test_fraction, 17)},
          {"epoch", std::to_string(st.next_step_in_epoch == 0 ? st.next_epoch - 1 : st.next_epoch)},
          {"step", std::to_string(st.step)},
          {"optimizer_steps", std::to_string(st.opt_steps)},
          {"skipped_steps", std::to_string(st.skipped)},
          {"consecutive_skipped_steps", std::to_string(st.consecutive_skipped)},
          {"epoch_skipped_steps", std::to_string(st.epoch_skipped)},
          {"next_epoch", std::to_string(st.next_epoch)},
          {"next_step_in_epoch", std::to_string(st.next_step_in_epoch)},
          {"epoch_loss_sum", fmt(st.epoch_loss_sum, 17)},
          {"epoch_steps", std::to_string(st.epoch_steps)},
          {"nadam_mu_product", fmt(st.mu_product, 17)},
          {"plateau_lr", fmt(st.plateau.lr, 17)},
          {"plateau_best", fmt(st.plateau.best, 17)},
          {"plateau_bad_epochs", std::to_string(st.plateau.bad_epochs)},
          {"best_val_dice", fmt(st.best_dice, 17)},
          {"best_epoch", std::to_string(st.best_epoch)},
          {"epochs_since_best", std::to_string(st.epochs_since_best)},
          {"finished", st.finished ? "1" : "0"}};
}

RunState state_from_metadata(const Metadata& m, const std::string& path) {
  auto get = [&](const char* k) -> std::string {
    for (auto& [key, v] : m)
      if (key == k) return v;
    fail(path, ": not a resumable checkpoint (metadata '", k, "' is missing)");
  };
  auto num = [&](const char* k) {
    const std::string v = get(k);
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end) fail(path, ": metadata '", k, "' is not a number: '", v, "'");
    return d;
  };
  auto integer = [&](const char* k) {
    const std::string v = get(k);
    char* end = nullptr;
    long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end) fail(path, ": metadata '", k, "' is not an integer: '", v, "'");
    return int64_t(x);
  };
  RunState s;
  s.next_epoch = int(integer("next_epoch"));
  s.next_step_in_epoch = integer("next_step_in_epoch");
  s.step = integer("step");
  s.epoch_loss_sum = num("epoch_loss_sum");
  s.epoch_steps = integer("epoch_steps");
  s.mu_product = num("nadam_mu_product");
  s.plateau.lr = num("plateau_lr");
  s.plateau.best = num("plateau_best");
  s.plateau.bad_epochs = int(integer("plateau_bad_epochs"));
  s.best_dice = num("best_val_dice");
  s.best_epoch = int(integer("best_epoch"));
  s.epochs_since_best = int(integer("epochs_since_best"));
  for (auto& [key, v] : m)
    if (key == "finished") s.finished = v == "1";
  // Written since non-finite steps are skipped; a checkpoint without them had none.
  s.opt_steps = s.step;
  for (auto& [key, v] : m)
    if (key == "optimizer_steps") {
      s.opt_steps = integer("optimizer_steps");
      s.skipped = integer("skipped_steps");
      s.consecutive_skipped = int(integer("consecutive_skipped_steps"));
      s.epoch_skipped = integer("epoch_skipped_steps");
    }
  if (s.opt_steps < 0 || s.opt_steps > s.step || s.skipped != s.step - s.opt_steps || s.epoch_skipped < 0 ||
      s.epoch_skipped > s.epoch_steps || s.consecutive_skipped < 0 || s.consecutive_skipped > s.skipped)
    fail(path, ": inconsistent step counts in its metadata (step ", s.step, ", optimizer_steps ", s.opt_steps,
         ", skipped_steps ", s.skipped, ")");
  return s;
}

json::Value options_json(const TrainOptions& o) {
  json::Value v = json::Value::object();
  v.set("data", o.data_dir);
  v.set("split_dir", o.split_dir);
  v.set("out", o.out_dir);
  v.set("filters", filters_string(o.model.filters));
  v.set("size", o.size);
  v.set("batch", o.batch);
  v.set("epochs", o.epochs);
  v.set("max_steps", o.max_steps);
  v.set("max_skipped_steps", o.max_skipped_steps);
  v.set("lr", o.lr);
  v.set("schedule", o.schedule);
  v.set("warmup", o.warmup);
  v.set("plateau_factor", o.plateau_factor);
  v.set("plateau_patience", o.plateau_patience);
  v.set("min_lr", o.min_lr);
  v.set("early_stop", o.early_stop);
  v.set("clip_grad", o.clip_grad);
  v.set("optimizer", optimizer_name(o.optimizer));
  v.set("momentum", o.momentum);
  v.set("weight_decay", o.weight_decay);
  v.set("loss", loss_name(o.loss));
  v.set("augment", o.augment);
  v.set("augment_set", o.augment_set);
  v.set("seed", int64_t(o.seed));
  v.set("shuffle", o.shuffle);
  v.set("val_fraction", o.val_fraction);
  v.set("test_fraction", o.test_fraction);
  v.set("device", o.device);
  v.set("precision", o.precision);
  v.set("deterministic", o.deterministic);
  v.set("allow_tf32", o.allow_tf32);
  v.set("recompute", o.recompute);
  v.set("kernels", o.kernels);
  v.set("weights", o.weights);
  return v;
}

json::Value build_json() {
  json::Value b = json::Value::object();
#ifdef RESUNETPP_VERSION
  b.set("version", RESUNETPP_VERSION);
#endif
#ifdef RESUNETPP_BUILD_TYPE
  b.set("build_type", RESUNETPP_BUILD_TYPE);
#endif
#ifdef __VERSION__
  b.set("compiler", __VERSION__);
#endif
#ifdef RESUNETPP_HAVE_CUDA
  b.set("cuda", true);
#else
  b.set("cuda", false);
#endif
  b.set("cpu_threads", cpu::num_threads());
  return b;
}

// Settings that must match for --resume to continue the same run.
void check_resume_compatible(const TrainOptions& o, const json::Value& saved, const std::string& config_path) {
  const json::Value now = options_json(o);
  std::string diffs;
  for (const char* k : {"data", "split_dir", "filters", "size", "batch", "optimizer", "loss", "seed", "shuffle",
                        "val_fraction", "test_fraction", "augment", "augment_set", "schedule", "warmup", "lr",
                        "epochs", "momentum", "weight_decay", "clip_grad", "plateau_factor", "plateau_patience",
                        "min_lr", "early_stop", "precision"}) {
    const json::Value* a = saved.find(k);
    if (!a) continue;
    if (json::dump(*a) != json::dump(now[k])) diffs += std::string("\n  ") + k + ": run has " + json::dump(*a) +
                                                      ", now " + json::dump(now[k]);
  }
  if (!diffs.empty())
    fail("--resume: the settings differ from the run in ", config_path, " (start a new --out, or use the same flags):",
         diffs);
}

// The conv weight gradient sums per-thread partials, so bit-exact continuation needs the same
// thread count; a different one only changes the last bits, so it is a warning.
void warn_if_threads_differ(const json::Value& saved, std::ostream& log) {
  const json::Value* b = saved.find("build");
  const json::Value* t = b ? b->find("cpu_threads") : nullptr;
  if (t && t->is_int() && t->as_int() != cpu::num_threads())
    log << "warning: the run used " << t->as_int() << " CPU threads and this process has " << cpu::num_threads()
        << " (RESUNETPP_THREADS): the continued losses may differ from an uninterrupted run in the last bits\n";
}

// checkpoint_last's metadata is not covered by the data checksum: check that the position it
// names is one this run can be at.
void check_run_position(const RunState& st, int epochs, int64_t steps_per_epoch, const std::string& path) {
  const bool ok = st.next_epoch >= 1 && st.next_epoch <= epochs + 1 && st.next_step_in_epoch >= 0 &&
                  st.next_step_in_epoch <= steps_per_epoch && st.epoch_steps == st.next_step_in_epoch &&
                  st.step == int64_t(st.next_epoch - 1) * steps_per_epoch + st.next_step_in_epoch;
  if (!ok)
    fail(path, ": the run position in its metadata (epoch ", st.next_epoch, ", step ", st.next_step_in_epoch,
         " of ", steps_per_epoch, ", global step ", st.step, ") does not fit this run (", epochs, " epochs of ",
         steps_per_epoch, " steps); the file is damaged or from another run");
}

std::string csv_of(const std::vector<EpochRecord>& rs) {
  std::string csv = "epoch,step,train_loss,val_loss,val_dice,val_iou,lr,seconds,images_per_s,best\n";
  for (const EpochRecord& r : rs)
    csv += std::to_string(r.epoch) + "," + std::to_string(r.step) + "," + fmt(r.train_loss, 9) + "," +
           fmt(r.val_loss, 9) + "," + fmt(r.val_dice, 9) + "," + fmt(r.val_iou, 9) + "," + fmt(r.lr, 9) + "," +
           fmt(r.seconds, 6) + "," + fmt(r.images_per_s, 6) + "," + (r.best ? "1" : "0") + "\n";
  return csv;
}

json::Value record_json(const EpochRecord& r) {
  json::Value row = json::Value::object();
  row.set("epoch", r.epoch);
  row.set("step", r.step);
  row.set("train_loss", r.train_loss);
  row.set("val_loss", r.val_loss);
  row.set("val_dice", r.val_dice);
  row.set("val_iou", r.val_iou);
  row.set("lr", r.lr);
  row.set("seconds", r.seconds);
  row.set("images_per_s", r.images_per_s);
  row.set("best", r.best);
  row.set("skipped_steps", r.skipped_steps);
  return row;
}

std::vector<EpochRecord> records_from_jsonl(const std::string& path, int before_epoch) {
  std::vector<EpochRecord> rs;
  if (!file_exists(path)) return rs;
  std::istringstream in(read_file(path));
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    json::Value v = json::parse(line, path + ":" + std::to_string(lineno));
    auto num = [&](const char* k) { return v[k].is_null() ? NAN : v[k].as_double(); };
    EpochRecord r;
    r.epoch = int(v["epoch"].as_int());
    if (r.epoch >= before_epoch) break;
    r.step = v["step"].as_int();
    r.train_loss = num("train_loss");
    r.val_loss = num("val_loss");
    r.val_dice = num("val_dice");
    r.val_iou = num("val_iou");
    r.lr = num("lr");
    r.seconds = num("seconds");
    r.images_per_s = num("images_per_s");
    r.best = v["best"].as_bool();
    if (v.contains("skipped_steps")) r.skipped_steps = v["skipped_steps"].as_int();
    rs.push_back(r);
  }
  return rs;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Evaluator::Evaluator(const ModelConfig& cfg, int size, int batch, ParamStore& store, const std::string& device,
                     const ExecOptions& options)
    : mg_(build_resunetpp(config_for_device(cfg, device), batch, size, size, /*training=*/false)),
      batch_(batch),
      size_(size) {
  if (options.precision == Precision::Bf16) store_activations_in_bf16(mg_.graph);
  exec_ = make_executor(mg_.graph, store, device, options);
  logits_.resize(size_t(batch) * size_t(size) * size_t(size));
}

template <class F>
void Evaluator::for_batches(const LoadedDataset& ds, F&& f) {
  if (ds.size != size_) fail("evaluator built for ", size_, "x", size_, " images, dataset is ", ds.size);
  std::vector<int> idx(static_cast<size_t>(batch_));
  for (int start = 0; start < ds.n; start += batch_) {
    const int count = std::min(batch_, ds.n - start);
    for (int i = 0; i < batch_; ++i) idx[size_t(i)] = start + (i < count ? i : 0);  // pad with a repeat
    float* images = exec_->input_buffer(mg_.image);
    gather_batch(ds, idx.data(), batch_, images, nullptr);
    exec_->set_input(mg_.image, images);
    exec_->run();
    exec_->read_output(mg_.logits, logits_.data());
    f(start, count, static_cast<const float*>(logits_.data()));
  }
}

EvalResult Evaluator::evaluate(const LoadedDataset& ds, LossKind loss) {
  EvalResult r;
  const int64_t per = int64_t(size_) * size_;
  double loss_sum = 0, dice_sum = 0, iou_sum = 0;
  for_batches(ds, [&](int start, int count, const float* lg) {
    for (int i = 0; i < count; ++i) {
      const float* l = lg + i * per;
      const float* m = ds.masks.data() + (start + i) * per;
      Confusion c = confusion_from_logits(l, m, per);
      r.per_image.push_back(c);
      r.pooled += c;
      dice_sum += dice(c);
      iou_sum += iou(c);
      if (loss != LossKind::Dice) loss_sum += cpu::bce_with_logits_forward(per, l, m);
      if (loss != LossKind::BCE) loss_sum += cpu::dice_loss_forward(per, l, m);
    }
  });
  if (ds.n > 0) {
    r.loss = loss_sum / ds.n;
    r.mean_dice = dice_sum / ds.n;
    r.mean_iou = iou_sum / ds.n;
  }
  return r;
}

// ---------------------------------------------------------------------------------------------

double scheduled_lr(const TrainOptions& o, int64_t step, int64_t total, double base) {
  if (o.warmup > 0 && step < o.warmup) return base * double(step + 1) / double(o.warmup);
  if (o.schedule == "cosine") {
    const double span = double(std::max<int64_t>(1, total - o.warmup));
    const double t = std::min(1.0, double(step - o.warmup) / span);
    return base * 0.5 * (1.0 + std::cos(3.141592653589793 * t));
  }
  return base;
}

bool PlateauState::update(double metric, const TrainOptions& o) {
  if (best < 0 || metric > best * (1.0 + 1e-4)) {
    best = metric;
    bad_epochs = 0;
    return false;
  }
  if (++bad_epochs > o.plateau_patience) {
    bad_epochs = 0;
    const double next = std::max(lr * o.plateau_factor, o.min_lr);
    const bool changed = next < lr;
    lr = next;
    return changed;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------

TrainResult train_model(const TrainOptions& o, std::ostream& log, const ProgressFn& progress) {
  const DeviceSpec dev = parse_device(o.device);
  if (dev.cuda && !kHaveCudaExecutor)
    fail("--device ", o.device, ": this resunetpp was built without CUDA/cuDNN, so only --device cpu is available");
  if (dev.cuda && dev.index >= cuda_executor_device_count())
    fail("--device ", o.device, ": ", cuda_executor_device_count() == 0 ? std::string("no CUDA device is visible")
         : "this machine has " + std::to_string(cuda_executor_device_count()) + " CUDA device(s)", "; use --device cpu");
  parse_kernel_choice(o.kernels);  // rejects a bad --kernels before any data is read
  const Precision precision = parse_precision(o.precision);
  if (precision == Precision::Bf16 && !dev.cuda)
    fail("--precision bf16 runs on the CUDA executor only (the CPU backend is fp32); use --device cuda or "
         "--precision fp32");
  if (o.batch < 1) fail("--batch must be at least 1, got ", o.batch);
  if (o.epochs < 1) fail("--epochs must be at least 1, got ", o.epochs);
  if (!(o.lr > 0)) fail("--lr must be positive, got ", o.lr);
  if (o.schedule != "constant" && o.schedule != "cosine" && o.schedule != "plateau")
    fail("--schedule must be constant, plateau or cosine, got '", o.schedule, "'");
  if (o.warmup < 0) fail("--warmup must not be negative, got ", o.warmup);
  if (o.clip_grad < 0) fail("--clip-grad must not be negative, got ", o.clip_grad);
  if (o.early_stop < 0) fail("--early-stop must not be negative, got ", o.early_stop);
  if (o.resume && o.out_dir.empty()) fail("--resume needs --out (the run folder to continue)");
  if (o.resume && !o.weights.empty()) fail("--resume and --weights exclude each other");
  if (!o.resume && !o.overwrite && !o.out_dir.empty() &&
      (file_exists(o.out_dir + "/config.json") || file_exists(o.out_dir + "/checkpoint_last.safetensors")))
    fail("--out ", o.out_dir, " already holds a training run: continue it with --resume, replace it with --overwrite, "
         "or choose another --out");
  AugmentConfig aug = augment_preset(o.augment);
  if (!o.augment_set.empty()) apply_augment_overrides(aug, o.augment_set);
  validate_augment(aug);
  const bool augmenting = !augment_is_identity(aug);
  const double t0 = now_seconds();

  // ---- data ----
  std::vector<Sample> all = scan_dataset(o.data_dir), train_s, val_s, test_s;
  if (!o.split_dir.empty()) {
    train_s = read_split_file(o.split_dir + "/train.txt", all);
    val_s = read_split_file(o.split_dir + "/val.txt", all);
    std::vector<std::string> both;
    for (const Sample& v : val_s)
      for (const Sample& t : train_s)
        if (t.stem == v.stem) both.push_back(v.stem);
    if (!both.empty()) {
      std::string list;
      for (size_t i = 0; i < both.size() && i < 5; ++i) list += (i ? ", " : "") + both[i];
      fail(o.split_dir, ": ", both.size(), " image(s) are in both train.txt and val.txt (", list,
           both.size() > 5 ? ", ..." : "", "); validation data must not be trained on");
    }
  } else {
    SplitFractions fr;
    fr.val = o.val_fraction;
    fr.test = o.test_fraction;
    fr.train = 1.0 - o.val_fraction - o.test_fraction;
    if (fr.train <= 0) fail("validation and test fractions leave no training data");
    split_seeded(all, o.seed, fr, &train_s, &val_s, &test_s);
  }
  if (val_s.empty()) fail("the validation split of ", o.data_dir, " is empty");
  LoadedDataset train_ds = load_dataset(train_s, o.size);
  LoadedDataset val_ds = load_dataset(val_s, o.size);
  if (train_ds.n < o.batch)
    fail("the training split of ", o.data_dir, " has ", train_ds.n, " images, fewer than the batch size ", o.batch);
  const double t_data = now_seconds() - t0;

  // ---- graphs, plans, parameters ----
  ModelGraph mg = build_resunetpp(config_for_device(o.model, o.device), o.batch, o.size, o.size, /*training=*/true,
                                  o.loss);
  BackwardOptions bo;
  bo.recompute = o.recompute;
  append_optimizer(mg.graph, append_backward(mg.graph, mg.loss, bo), o.optimizer);
  // bf16: the saved activations in bf16; gradients, parameters and optimiser state stay fp32.
  if (precision == Precision::Bf16) store_activations_in_bf16(mg.graph);
  ParamStore store;
  init_params(mg.graph, store, o.seed);
  ExecOptions eo;
  eo.precision = precision;
  eo.deterministic = o.deterministic;
  eo.allow_tf32 = o.allow_tf32;
  eo.kernels = parse_kernel_choice(o.kernels);
  // On a GPU each executor holds its own device copy of the store: the training executor's is
  // downloaded before checkpoints and validation, the evaluator's uploaded before validation.
  std::unique_ptr<Executor> exec = make_executor(mg.graph, store, o.device, eo);
  Evaluator evaluator(o.model, o.size, o.batch, store, o.device, eo);
  const int64_t steps_per_epoch = train_ds.n / o.batch;
  // The schedule spans --epochs; --max-steps only stops early, so a run cut by it and resumed
  // follows the same learning rates as one that never stopped.
  const int64_t total_steps = steps_per_epoch * o.epochs;

  RunState st;
  st.plateau.lr = o.lr;
  TrainResult res;
  const std::string last_path = o.out_dir + "/checkpoint_last.safetensors";
  if (o.resume) {
    const std::string config_path = o.out_dir + "/config.json";
    const json::Value saved_config = json::parse(read_file(config_path), config_path);
    check_resume_compatible(o, saved_config, config_path);
    Metadata meta = load_checkpoint(last_path, mg.graph, store, /*optimizer=*/true);
    st = state_from_metadata(meta, last_path);
    check_run_position(st, o.epochs, steps_per_epoch, last_path);
    warn_if_threads_differ(saved_config, log);
    res.epochs = records_from_jsonl(o.out_dir + "/log.jsonl", st.next_epoch);
    if (st.finished) {
      res.best_dice = std::max(0.0, st.best_dice);
      res.best_epoch = st.best_epoch;
      res.steps = st.step;
      log << "the run in " << o.out_dir << " has already finished (" << res.epochs.size()
          << " epochs, best validation Dice " << fmt(res.best_dice, 4) << " at epoch " << st.best_epoch
          << "); nothing to do\n";
      return res;
    }
    log << "resuming " << o.out_dir << " at epoch " << st.next_epoch << ", step " << st.step << "\n";
  } else if (!o.weights.empty()) {
    load_checkpoint(o.weights, mg.graph, store, /*optimizer=*/false);
    log << "initial weights: " << o.weights << "\n";
  }
  exec->upload_params();  // the store may have been loaded after the executors were built
  evaluator.upload_params();
  res.best_dice = std::max(0.0, st.best_dice);
  res.best_epoch = st.best_epoch;

  log << "data: " << train_ds.n << " training and " << val_ds.n << " validation images from " << o.data_dir
      << " at " << o.size << "x" << o.size << " (loaded in " << fmt(t_data, 3) << " s); augmentation: "
      << describe(aug) << "\n"
      << "model: " << count_params(mg.graph) << " parameters; training plan arena "
      << fmt(exec->plan().arena_bytes / 1048576.0, 4) << " MiB (naive " << fmt(exec->plan().naive_bytes / 1048576.0, 4)
      << " MiB), workspace " << fmt(exec->plan().workspace_bytes / 1048576.0, 4) << " MiB\n"
      << "training: " << optimizer_name(o.optimizer) << " lr " << o.lr << " (" << o.schedule << "), batch "
      << o.batch << ", " << steps_per_epoch << " steps per epoch, loss " << loss_name(o.loss) << ", device "
      << exec->describe() << "\n";
  log.flush();

  if (!o.out_dir.empty() && !o.resume) {
    make_dirs(o.out_dir);
    json::Value cfg = options_json(o);
    cfg.set("train_images", train_ds.n);
    cfg.set("val_images", val_ds.n);
    cfg.set("parameters", count_params(mg.graph));
    cfg.set("augment_resolved", describe(aug));
    cfg.set("build", build_json());
    write_file_atomic(o.out_dir + "/config.json", json::dump(cfg, 2) + "\n");
  }
  auto save_last = [&] {
    if (o.out_dir.empty()) return;
    exec->download_params();
    save_checkpoint(last_path, mg.graph, store, /*optimizer=*/true, run_metadata(o, st));
  };

  // ---- loop ----
  std::vector<int> order(size_t(train_ds.n));
  bool stop = false;
  double loader_busy = 0;
  int64_t loader_images = 0;
  for (int epoch = st.next_epoch; epoch <= o.epochs && !stop; ++epoch) {
    const double te = now_seconds();
    std::iota(order.begin(), order.end(), 0);
    if (o.shuffle) {
      Rng rng(o.seed, 1000 + uint64_t(epoch));
      for (int i = train_ds.n - 1; i > 0; --i) std::swap(order[size_t(i)], order[rng.below(uint32_t(i + 1))]);
    }
    const int64_t first = epoch == st.next_epoch ? st.next_step_in_epoch : 0;
    if (first == 0) {
      st.epoch_loss_sum = 0;
      st.epoch_steps = 0;
    }
    BatchLoader loader(train_ds, order, o.batch, first, steps_per_epoch, augmenting ? &aug : nullptr, o.seed, epoch);
    int64_t s = first;
    int64_t steps_now = 0;
    // The next batch is assembled and its upload queued while the current step runs (on a GPU
    // the step is asynchronous until last_loss()); the batches and their order are unchanged.
    auto fetch = [&](int64_t for_step) {
      float* images = exec->input_buffer(mg.image);
      float* targets = exec->input_buffer(mg.target);
      loader.next(images, targets);
      if (std::find(o.nonfinite_steps.begin(), o.nonfinite_steps.end(), for_step) != o.nonfinite_steps.end())
        images[0] = std::numeric_limits<float>::quiet_NaN();
      exec->set_input(mg.image, images);
      exec->set_input(mg.target, targets);
    };
    bool fetched = false;
    for (; s < steps_per_epoch; ++s) {
      if ((o.max_steps > 0 && st.step >= o.max_steps) || (o.stop && o.stop->load())) {
        stop = true;
        res.interrupted = o.stop && o.stop->load();
        break;
      }
      if (!fetched) fetch(st.step + 1);
      fetched = false;
      cpu::OptimStep os;
      os.lr = scheduled_lr(o, st.step, total_steps, o.schedule == "plateau" ? st.plateau.lr : o.lr);
      os.momentum = o.momentum;
      os.weight_decay = o.weight_decay;
      os.clip_grad_norm = o.clip_grad;
      os.step = st.opt_steps + 1;  // skipped steps do not advance the Adam-family step count
      double mu_product = st.mu_product;
      if (o.optimizer == OptimizerKind::Nadam) {
        cpu::nadam_schedule(os, mu_product);
        mu_product = os.nadam_mu_product;
      }
      exec->run(&os);
      if (s + 1 < steps_per_epoch && (o.max_steps <= 0 || st.step + 1 < o.max_steps) && !(o.stop && o.stop->load())) {
        fetch(st.step + 2);
        fetched = true;
      }
      // On a GPU, reading the loss is the step's one synchronisation (runtime/executor_cuda.h).
      const double loss = exec->last_loss();
      const double grad_norm = exec->last_grad_norm();
      // A non-finite loss or gradient norm: the executor skipped the update (Executor::run).
      if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
        ++st.skipped;
        ++st.epoch_skipped;
        ++st.consecutive_skipped;
        auto show = [](double v) { return std::isnan(v) ? std::string("nan") : fmt(v); };  // not "-nan"
        log << "step " << st.step + 1 << " (step " << s + 1 << " of epoch " << epoch << "): the loss is " << show(loss)
            << " and the gradient norm " << show(grad_norm) << "; update skipped (" << st.consecutive_skipped
            << " in a row, " << st.skipped << " in all)\n";
        log.flush();
        if (st.consecutive_skipped > o.max_skipped_steps)
          fail("training diverged: ", st.consecutive_skipped, " steps in a row up to step ", st.step + 1,
               " (step ", s + 1, " of epoch ", epoch, ") had a non-finite loss or gradient (the last: loss ",
               show(loss), ", gradient norm ", show(grad_norm), "; --max-skipped-steps ", o.max_skipped_steps,
               "); try a lower --lr or --clip-grad",
               o.out_dir.empty() ? std::string() : "; the last good checkpoint is " + last_path + " (--resume)");
      } else {
        st.mu_product = mu_product;
        ++st.opt_steps;
        st.consecutive_skipped = 0;
        st.epoch_loss_sum += loss;
      }
      ++st.step;
      ++steps_now;
      ++st.epoch_steps;
      res.step_losses.push_back(loss);
      if (progress)
        progress(epoch, s + 1, steps_per_epoch, loss, double(steps_now * o.batch) / (now_seconds() - te));
    }
    loader_busy += loader.busy_seconds();
    loader_images += loader.images_done();
    if (s == steps_per_epoch && o.stop && o.stop->load()) {  // interrupted after the epoch's last step
      stop = true;
      res.interrupted = true;
    }
    if (s < steps_per_epoch || res.interrupted) {  // stopped inside the epoch: remember where
      st.next_epoch = epoch;
      st.next_step_in_epoch = s;
      save_last();
      break;
    }
    const double train_seconds = now_seconds() - te;
    exec->download_params();     // the trained parameters and BN statistics into the store,
    evaluator.upload_params();   // and from there into the evaluator (both no-ops on the CPU)
    EvalResult ev = evaluator.evaluate(val_ds, o.loss);
    if (!std::isfinite(ev.loss))
      fail("training diverged: the validation loss after epoch ", epoch, " is ", ev.loss,
           "; nothing of this epoch was saved", o.out_dir.empty() || !file_exists(last_path) ? std::string()
           : "; the last good checkpoint is " + last_path + " (--resume)", "; try a lower --lr or --clip-grad");
    EpochRecord r;
    r.epoch = epoch;
    r.step = st.step;
    r.skipped_steps = st.epoch_skipped;
    r.train_loss = st.epoch_steps > st.epoch_skipped ? st.epoch_loss_sum / double(st.epoch_steps - st.epoch_skipped)
                                                      : NAN;
    r.val_loss = ev.loss;
    r.val_dice = ev.mean_dice;
    r.val_iou = ev.mean_iou;
    r.lr = scheduled_lr(o, st.step - 1, total_steps, o.schedule == "plateau" ? st.plateau.lr : o.lr);
    r.seconds = now_seconds() - te;
    r.images_per_s = double(steps_now * o.batch) / train_seconds;
    r.best = st.best_dice < 0 || r.val_dice > st.best_dice;
    if (r.best) {
      st.best_dice = r.val_dice;
      st.best_epoch = epoch;
      st.epochs_since_best = 0;
    } else {
      ++st.epochs_since_best;
    }
    bool lr_cut = false;
    if (o.schedule == "plateau") lr_cut = st.plateau.update(r.val_dice, o);
    res.epochs.push_back(r);
    res.best_dice = st.best_dice;
    res.best_epoch = st.best_epoch;
    st.next_epoch = epoch + 1;
    st.next_step_in_epoch = 0;
    st.epoch_loss_sum = 0;
    st.epoch_steps = 0;
    st.epoch_skipped = 0;
    log << "epoch " << epoch << "/" << o.epochs << "  step " << st.step << "  train_loss " << fmt(r.train_loss, 4)
        << "  val_loss " << fmt(r.val_loss, 4) << "  val_dice " << fmt(r.val_dice, 4) << "  val_iou "
        << fmt(r.val_iou, 4) << "  lr " << fmt(r.lr, 3) << "  " << fmt(r.seconds, 3) << " s  "
        << fmt(r.images_per_s, 3) << " img/s" << (r.best ? "  * best" : "")
        << (lr_cut ? "  (lr reduced to " + fmt(st.plateau.lr, 3) + ")" : "")
        << (r.skipped_steps ? "  (" + std::to_string(r.skipped_steps) + " steps skipped: non-finite)" : "") << "\n";
    log.flush();
    if (o.early_stop > 0 && st.epochs_since_best >= o.early_stop) {
      log << "early stop: no better validation Dice for " << o.early_stop << " epochs (best " << fmt(st.best_dice, 4)
          << " at epoch " << st.best_epoch << ")\n";
      res.early_stopped = true;
      stop = true;
    }
    if (o.max_steps > 0 && st.step >= o.max_steps) stop = true;
    st.finished = res.early_stopped || epoch == o.epochs;
    if (!o.out_dir.empty()) {
      // checkpoint_last goes last: it marks the epoch as done, so everything else of the epoch
      // must be on disk first (a crash in between replays the epoch, which is deterministic).
      if (r.best)  // the store is current: downloaded before validation
        save_checkpoint(o.out_dir + "/checkpoint_best.safetensors", mg.graph, store, false, run_metadata(o, st));
      write_file_atomic(o.out_dir + "/log.csv", csv_of(res.epochs));
      std::string jsonl;
      for (const EpochRecord& e : res.epochs) jsonl += json::dump(record_json(e)) + "\n";
      write_file_atomic(o.out_dir + "/log.jsonl", jsonl);
      std::vector<double> tl, vl, vd;
      for (const EpochRecord& e : res.epochs) {
        tl.push_back(e.train_loss);
        vl.push_back(e.val_loss);
        vd.push_back(e.val_dice);
      }
      save_training_curves(o.out_dir + "/curves.png", tl, vl, vd);
      save_last();
    }
  }
  res.steps = st.step;
  res.seconds = now_seconds() - t0;
  res.loader_images_per_s = loader_busy > 0 ? double(loader_images) / loader_busy : 0;
  if (res.interrupted) log << "interrupted at step " << st.step << "; checkpoint_last saved, continue with --resume\n";
  if (!o.out_dir.empty()) {
    json::Value s = json::Value::object();
    s.set("best_val_dice", res.best_dice);
    s.set("best_epoch", res.best_epoch);
    s.set("epochs", int64_t(res.epochs.size()));
    s.set("steps", res.steps);
    s.set("seconds", res.seconds);
    s.set("interrupted", res.interrupted);
    s.set("early_stopped", res.early_stopped);
    s.set("loader_images_per_s", res.loader_images_per_s);
    write_file_atomic(o.out_dir + "/summary.json", json::dump(s, 2) + "\n");
  }
  return res;
}

}  // namespace rpp
