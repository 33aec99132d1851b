// model/trainer.cpp — the training loop, validation and run-folder outputs.
#include "model/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "runtime/autodiff.h"
#include "runtime/checkpoint.h"
#include "runtime/fileio.h"
#include "kernels/cpu/parallel.h"
#include "runtime/json.h"
#include "runtime/rng.h"

namespace rpp {

namespace {

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string join_ints(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

std::string fmt(double v, int prec = 6) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", prec, v);
  return buf;
}

Metadata checkpoint_metadata(const TrainOptions& o, int epoch, int64_t step, double best_dice,
                             double nadam_mu_product) {
  return {{"model", "resunetpp"},
          {"filters", join_ints(o.model.filters)},
          {"in_channels", std::to_string(o.model.in_channels)},
          {"size", std::to_string(o.size)},
          {"epoch", std::to_string(epoch)},
          {"step", std::to_string(step)},
          {"optimizer", optimizer_name(o.optimizer)},
          {"nadam_mu_product", fmt(nadam_mu_product, 17)},
          {"seed", std::to_string(o.seed)},
          {"val_fraction", fmt(o.val_fraction, 17)},
          {"test_fraction", fmt(o.test_fraction, 17)},
          {"loss", loss_name(o.loss)},
          {"best_val_dice", fmt(best_dice, 17)}};
}

json::Value options_json(const TrainOptions& o) {
  json::Value v = json::Value::object();
  v.set("data", o.data_dir);
  v.set("split_dir", o.split_dir);
  v.set("out", o.out_dir);
  v.set("filters", join_ints(o.model.filters));
  v.set("size", o.size);
  v.set("batch", o.batch);
  v.set("epochs", o.epochs);
  v.set("max_steps", o.max_steps);
  v.set("lr", o.lr);
  v.set("schedule", o.schedule);
  v.set("warmup", o.warmup);
  v.set("optimizer", optimizer_name(o.optimizer));
  v.set("momentum", o.momentum);
  v.set("weight_decay", o.weight_decay);
  v.set("loss", loss_name(o.loss));
  v.set("seed", int64_t(o.seed));
  v.set("shuffle", o.shuffle);
  v.set("val_fraction", o.val_fraction);
  v.set("test_fraction", o.test_fraction);
  v.set("device", o.device);
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Evaluator::Evaluator(const ModelConfig& cfg, int size, int batch, ParamStore& store)
    : mg_(build_resunetpp(cfg, batch, size, size, /*training=*/false)), batch_(batch), size_(size) {
  exec_ = std::make_unique<CpuExecutor>(mg_.graph, store);
}

template <class F>
void Evaluator::for_batches(const LoadedDataset& ds, F&& f) {
  if (ds.size != size_) fail("evaluator built for ", size_, "x", size_, " images, dataset is ", ds.size);
  std::vector<int> idx(static_cast<size_t>(batch_));
  std::vector<float> dummy_mask(static_cast<size_t>(batch_) * size_ * size_);
  for (int start = 0; start < ds.n; start += batch_) {
    const int count = std::min(batch_, ds.n - start);
    for (int i = 0; i < batch_; ++i) idx[size_t(i)] = start + (i < count ? i : 0);  // pad with a repeat
    gather_batch(ds, idx.data(), batch_, exec_->data(mg_.image), dummy_mask.data());
    exec_->run();
    f(start, count, exec_->data(mg_.logits));
  }
}

std::vector<float> Evaluator::logits(const LoadedDataset& ds) {
  const int64_t per = int64_t(size_) * size_;
  std::vector<float> out(size_t(ds.n) * size_t(per));
  for_batches(ds, [&](int start, int count, const float* lg) {
    std::copy(lg, lg + count * per, out.begin() + start * per);
  });
  return out;
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

double scheduled_lr(const TrainOptions& o, int64_t step, int64_t total) {
  if (o.warmup > 0 && step < o.warmup) return o.lr * double(step + 1) / double(o.warmup);
  if (o.schedule == "cosine") {
    const double span = double(std::max<int64_t>(1, total - o.warmup));
    const double t = std::min(1.0, double(step - o.warmup) / span);
    return o.lr * 0.5 * (1.0 + std::cos(3.141592653589793 * t));
  }
  return o.lr;
}

// ---------------------------------------------------------------------------------------------

TrainResult train_model(const TrainOptions& o, std::ostream& log, const ProgressFn& progress) {
  if (o.device != "cpu") fail("device '", o.device, "' is not available in this build (use --device cpu)");
  if (o.batch < 1) fail("--batch must be at least 1, got ", o.batch);
  if (o.epochs < 1) fail("--epochs must be at least 1, got ", o.epochs);
  if (!(o.lr > 0)) fail("--lr must be positive, got ", o.lr);
  if (o.schedule != "constant" && o.schedule != "cosine")
    fail("--schedule must be constant or cosine, got '", o.schedule, "'");
  if (o.warmup < 0) fail("--warmup must not be negative, got ", o.warmup);
  const double t0 = now_seconds();

  // ---- data ----
  std::vector<Sample> all = scan_dataset(o.data_dir), train_s, val_s, test_s;
  if (!o.split_dir.empty()) {
    train_s = read_split_file(o.split_dir + "/train.txt", all);
    val_s = read_split_file(o.split_dir + "/val.txt", all);
  } else {
    SplitFractions fr;
    fr.val = o.val_fraction;
    fr.test = o.test_fraction;
    fr.train = 1.0 - o.val_fraction - o.test_fraction;
    if (fr.train <= 0) fail("validation and test fractions leave no training data");
    split_seeded(all, o.seed, fr, &train_s, &val_s, &test_s);
  }
  LoadedDataset train_ds = load_dataset(train_s, o.size);
  LoadedDataset val_ds = load_dataset(val_s, o.size);
  if (train_ds.n < o.batch)
    fail("the training split of ", o.data_dir, " has ", train_ds.n, " images, fewer than the batch size ", o.batch);
  const double t_data = now_seconds() - t0;

  // ---- graphs, plans, parameters ----
  ModelGraph mg = build_resunetpp(o.model, o.batch, o.size, o.size, /*training=*/true, o.loss);
  append_backward_and_update(mg.graph, mg.loss, o.optimizer);
  ParamStore store;
  init_params(mg.graph, store, o.seed);
  CpuExecutor exec(mg.graph, store);
  Evaluator evaluator(o.model, o.size, o.batch, store);
  const int64_t steps_per_epoch = train_ds.n / o.batch;
  int64_t total_steps = steps_per_epoch * o.epochs;
  if (o.max_steps > 0) total_steps = std::min(total_steps, o.max_steps);
  log << "data: " << train_ds.n << " training and " << val_ds.n << " validation images from " << o.data_dir
      << " at " << o.size << "x" << o.size << " (loaded in " << fmt(t_data, 3) << " s)\n"
      << "model: " << count_params(mg.graph) << " parameters; training plan arena "
      << fmt(exec.plan().arena_bytes / 1048576.0, 4) << " MiB (naive " << fmt(exec.plan().naive_bytes / 1048576.0, 4)
      << " MiB), workspace " << fmt(exec.plan().workspace_bytes / 1048576.0, 4) << " MiB\n"
      << "training: " << optimizer_name(o.optimizer) << " lr " << o.lr << ", batch " << o.batch << ", "
      << steps_per_epoch << " steps per epoch, loss " << loss_name(o.loss) << ", device cpu ("
      << cpu::num_threads() << " threads)\n";

  if (!o.out_dir.empty()) {
    make_dirs(o.out_dir);
    json::Value cfg = options_json(o);
    cfg.set("train_images", train_ds.n);
    cfg.set("val_images", val_ds.n);
    cfg.set("parameters", count_params(mg.graph));
    write_file_atomic(o.out_dir + "/config.json", json::dump(cfg, 2) + "\n");
  }

  // ---- loop ----
  TrainResult res;
  std::vector<int> order(size_t(train_ds.n));
  std::iota(order.begin(), order.end(), 0);
  double mu_product = 1.0, last_lr = o.lr;
  int64_t step = 0;
  bool stop = false;
  std::string csv = "epoch,step,train_loss,val_loss,val_dice,val_iou,lr,seconds,images_per_s,best\n";
  std::string jsonl;
  for (int epoch = 1; epoch <= o.epochs && !stop; ++epoch) {
    const double te = now_seconds();
    if (o.shuffle) {
      Rng rng(o.seed, 1000 + uint64_t(epoch));
      for (int i = train_ds.n - 1; i > 0; --i) std::swap(order[size_t(i)], order[rng.below(uint32_t(i + 1))]);
    }
    double loss_sum = 0;
    int64_t steps_done = 0;
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      if (o.max_steps > 0 && step >= o.max_steps) {
        stop = true;
        break;
      }
      gather_batch(train_ds, order.data() + s * o.batch, o.batch, exec.data(mg.image), exec.data(mg.target));
      cpu::OptimStep os;
      os.lr = scheduled_lr(o, step, total_steps);
      last_lr = os.lr;
      os.momentum = o.momentum;
      os.weight_decay = o.weight_decay;
      os.step = step + 1;
      if (o.optimizer == OptimizerKind::Nadam) {
        cpu::nadam_schedule(os, mu_product);
        mu_product = os.nadam_mu_product;
      }
      exec.run(&os);
      const double loss = *exec.data(mg.loss);
      if (!std::isfinite(loss))
        fail("training loss became ", loss, " at step ", step + 1,
             o.out_dir.empty() ? std::string() : "; the last good checkpoint is in " + o.out_dir);
      ++step;
      ++steps_done;
      loss_sum += loss;
      res.step_losses.push_back(loss);
      if (progress) progress(epoch, s + 1, steps_per_epoch, loss, double(steps_done * o.batch) / (now_seconds() - te));
    }
    if (steps_done == 0) break;
    const double train_seconds = now_seconds() - te;
    EvalResult ev = evaluator.evaluate(val_ds, o.loss);
    EpochRecord r;
    r.epoch = epoch;
    r.step = step;
    r.train_loss = loss_sum / double(steps_done);
    r.val_loss = ev.loss;
    r.val_dice = ev.mean_dice;
    r.val_iou = ev.mean_iou;
    r.lr = last_lr;
    r.seconds = now_seconds() - te;
    r.images_per_s = double(steps_done * o.batch) / train_seconds;
    r.best = res.epochs.empty() || r.val_dice > res.best_dice;
    if (r.best) {
      res.best_dice = r.val_dice;
      res.best_epoch = epoch;
    }
    res.epochs.push_back(r);
    log << "epoch " << epoch << "/" << o.epochs << "  step " << step << "  train_loss " << fmt(r.train_loss, 4)
        << "  val_loss " << fmt(r.val_loss, 4) << "  val_dice " << fmt(r.val_dice, 4) << "  val_iou "
        << fmt(r.val_iou, 4) << "  lr " << fmt(r.lr, 3) << "  " << fmt(r.seconds, 3) << " s  " << fmt(r.images_per_s, 3)
        << " img/s" << (r.best ? "  * best" : "") << "\n";
    log.flush();

    if (!o.out_dir.empty()) {
      const Metadata meta = checkpoint_metadata(o, epoch, step, res.best_dice, mu_product);
      save_checkpoint(o.out_dir + "/checkpoint_last.safetensors", mg.graph, store, /*optimizer=*/true, meta);
      if (r.best) save_checkpoint(o.out_dir + "/checkpoint_best.safetensors", mg.graph, store, false, meta);
      csv += std::to_string(epoch) + "," + std::to_string(step) + "," + fmt(r.train_loss, 9) + "," +
             fmt(r.val_loss, 9) + "," + fmt(r.val_dice, 9) + "," + fmt(r.val_iou, 9) + "," + fmt(r.lr, 9) + "," +
             fmt(r.seconds, 6) + "," + fmt(r.images_per_s, 6) + "," + (r.best ? "1" : "0") + "\n";
      write_file_atomic(o.out_dir + "/log.csv", csv);
      json::Value row = json::Value::object();
      row.set("epoch", epoch);
      row.set("step", step);
      row.set("train_loss", r.train_loss);
      row.set("val_loss", r.val_loss);
      row.set("val_dice", r.val_dice);
      row.set("val_iou", r.val_iou);
      row.set("lr", r.lr);
      row.set("seconds", r.seconds);
      row.set("images_per_s", r.images_per_s);
      row.set("best", r.best);
      jsonl += json::dump(row) + "\n";
      write_file_atomic(o.out_dir + "/log.jsonl", jsonl);
    }
  }
  res.steps = step;
  res.seconds = now_seconds() - t0;
  if (!o.out_dir.empty()) {
    json::Value s = json::Value::object();
    s.set("best_val_dice", res.best_dice);
    s.set("best_epoch", res.best_epoch);
    s.set("epochs", int64_t(res.epochs.size()));
    s.set("steps", res.steps);
    s.set("seconds", res.seconds);
    write_file_atomic(o.out_dir + "/summary.json", json::dump(s, 2) + "\n");
  }
  return res;
}

}  // namespace rpp
