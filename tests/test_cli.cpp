// tests/test_cli.cpp — the `resunetpp` command line as a user meets it: help, errors that name
// the problem, synth → train → eval end to end on a tiny synthetic set, and the run folder.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/fileio.h"
#include "runtime/json.h"
#include "runtime/safetensors.h"

#include "tests/run_command.h"

using namespace rpp;

namespace {

using Result = testing_util::CommandResult;

Result run(const std::string& args) { return testing_util::run_command(std::string(RESUNETPP_CLI) + " " + args); }

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

std::string tmpdir(const std::string& name) {
  std::string d = "/tmp/rpp_test_cli_" + std::to_string(getpid()) + "_" + name;
  std::system(("rm -rf " + d).c_str());
  return d;
}

}  // namespace

TEST(Cli, HelpListsCommandsAndFlagsWithDefaults) {
  Result r = run("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* c : {"summary", "synth", "train", "eval"}) EXPECT_TRUE(has(r.out, c)) << c;
  r = run("train --help");
  EXPECT_EQ(r.code, 0);
  for (const char* f : {"--data", "--split-dir", "--out", "--size", "--batch", "--epochs", "--max-steps", "--lr",
                        "--optimizer", "--momentum", "--weight-decay", "--loss", "--seed", "--no-shuffle", "--device"})
    EXPECT_TRUE(has(r.out, f)) << f;
  EXPECT_TRUE(has(r.out, "(default: 0.001)")) << r.out;
  EXPECT_TRUE(has(r.out, "(required)")) << r.out;
}

TEST(Cli, ErrorsNameTheProblem) {
  Result r = run("frobnicate");
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.out, "unknown command 'frobnicate'")) << r.out;
  r = run("train --data /nonexistent/rpp_folder --out /tmp/x");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "/nonexistent/rpp_folder")) << r.out;
  r = run("train --data /tmp --bogus 3");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "unknown option --bogus")) << r.out;
  r = run("train");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "needs --data")) << r.out;
  r = run("summary --size 60");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "multiple of 8")) << r.out;
  r = run("train --data /tmp --lr abc");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "--lr expects a number")) << r.out;
}

TEST(Cli, TrainIntoAnUnwritableFolderNamesIt) {
  const std::string data = tmpdir("unwritable_data"), file = tmpdir("a_file");
  ASSERT_EQ(run("synth --out " + data + " --count 12 --size 16").code, 0);
  write_file_atomic(file, std::string("not a folder"));
  Result r = run("train --data " + data + " --out " + file + "/run --size 16 --batch 4 --epochs 1 --filters 8,8,16,16,32");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, file)) << r.out;
  EXPECT_EQ(read_file(file), "not a folder");  // nothing overwritten
  std::system(("rm -rf " + data + " " + file).c_str());
}

TEST(Cli, SummaryReportsParametersFlopsAndPlans) {
  Result r = run("summary --size 64 --batch 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "4,062,993 trainable")) << r.out;
  EXPECT_TRUE(has(r.out, "7,392 BN running statistics")) << r.out;
  EXPECT_TRUE(has(r.out, "plan (training")) << r.out;
  EXPECT_TRUE(has(r.out, "plan (inference")) << r.out;
  EXPECT_TRUE(has(r.out, "vs naive sum")) << r.out;
  EXPECT_TRUE(has(r.out, "forward values recomputed instead of kept")) << r.out;
  // The fused plans with bf16 activations: inference about half the fused fp32 arena. (At batch 16:
  // at batch 2 the fp32 parameter gradients, 16 MB, are most of a 20 MB training peak.)
  r = run("summary --size 64 --batch 16 --fuse on");
  ASSERT_EQ(r.code, 0) << r.out;
  // The byte count in "(N bytes)" after the first "arena" following `marker`.
  auto arena_bytes = [&](const std::string& marker) -> double {
    const size_t m = r.out.find(marker);
    const size_t a = m == std::string::npos ? m : r.out.find("arena", m);
    const size_t open = a == std::string::npos ? a : r.out.find('(', a);
    if (open == std::string::npos) return -1;
    return std::strtod(r.out.c_str() + open + 1, nullptr);
  };
  const double fp32 = arena_bytes("plan (inference"), bf16 = arena_bytes("eval/predict --precision bf16");
  EXPECT_GT(fp32, 0) << r.out;
  EXPECT_GT(bf16, 0) << r.out;
  EXPECT_LT(bf16, 0.6 * fp32) << r.out;
  // Training: the saved activations halve, the fp32 gradients do not.
  const double train32 = arena_bytes("plan (training"), train16 = arena_bytes("train --precision bf16");
  EXPECT_GT(train16, 0) << r.out;
  EXPECT_LT(train16, 0.9 * train32) << r.out;
  EXPECT_GT(train16, 0.4 * train32) << r.out;
}

TEST(Cli, SynthTrainEvalEndToEnd) {
  const std::string data = tmpdir("data"), run_dir = tmpdir("run");
  Result r = run("synth --out " + data + " --count 24 --size 32 --seed 3");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(file_exists(data + "/images/synth_00023.png"));
  EXPECT_TRUE(file_exists(data + "/masks/synth_00000.png"));
  r = run("train --data " + data + " --out " + run_dir +
          " --size 32 --batch 4 --epochs 2 --filters 8,8,16,16,32 --seed 5");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "epoch 2/2")) << r.out;
  for (const char* f : {"config.json", "log.csv", "log.jsonl", "checkpoint_best.safetensors",
                        "checkpoint_last.safetensors", "summary.json"})
    EXPECT_TRUE(file_exists(run_dir + "/" + f)) << f;
  json::Value cfg = json::parse(read_file(run_dir + "/config.json"), "config.json");
  EXPECT_EQ(cfg["batch"].as_int(), 4);
  EXPECT_EQ(cfg["filters"].as_string(), "8,8,16,16,32");
  const std::string csv = read_file(run_dir + "/log.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3) << csv;  // header + 2 epochs
  // The last checkpoint carries optimiser state; the best one only the model.
  StFile last = read_safetensors(run_dir + "/checkpoint_last.safetensors");
  StFile best = read_safetensors(run_dir + "/checkpoint_best.safetensors");
  EXPECT_NE(last.find("optim.output.weight.exp_avg"), nullptr);
  EXPECT_EQ(best.find("optim.output.weight.exp_avg"), nullptr);
  EXPECT_NE(best.find("output.weight"), nullptr);
  EXPECT_EQ(best.metadata_value("filters"), "8,8,16,16,32");
  // Evaluate it on the held-out split.
  r = run("eval --checkpoint " + run_dir + "/checkpoint_best.safetensors --data " + data + " --split test --out " +
          run_dir + "/eval.json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "dice")) << r.out;
  json::Value ev = json::parse(read_file(run_dir + "/eval.json"), "eval.json");
  const double d = ev["mean_per_image"]["dice"].as_double();
  EXPECT_GE(d, 0.0);
  EXPECT_LE(d, 1.0);
  EXPECT_GE(ev["images"].as_int(), 1);
  EXPECT_EQ(ev["precision"].as_string(), "fp32");
  // --device: cpu works; an unknown device is refused before anything is written.
  r = run("eval --checkpoint " + run_dir + "/checkpoint_best.safetensors --data " + data + " --split test --device cpu");
  EXPECT_EQ(r.code, 0) << r.out;
  r = run("predict --checkpoint " + run_dir + "/checkpoint_best.safetensors --input " + data +
          "/images --out " + run_dir + "/pred_tpu --device tpu");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "device must be auto, cpu, cuda or cuda:N, got 'tpu'")) << r.out;
  EXPECT_FALSE(file_exists(run_dir + "/pred_tpu"));
  // --precision: bf16 needs CUDA, an unknown name is refused; neither writes anything.
  r = run("predict --checkpoint " + run_dir + "/checkpoint_best.safetensors --input " + data + "/images --out " +
          run_dir + "/pred_bf16 --device cpu --precision bf16");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "the CPU backend runs fp32 only")) << r.out;
  EXPECT_FALSE(file_exists(run_dir + "/pred_bf16"));
  r = run("eval --checkpoint " + run_dir + "/checkpoint_best.safetensors --data " + data +
          " --split test --device cpu --precision fp16");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "precision must be fp32 or bf16, got 'fp16'")) << r.out;
  // bf16 training needs the CUDA executor; refused before any data is read or anything written.
  r = run("train --data " + data + " --out " + run_dir + "/train_bf16 --device cpu --precision bf16 --epochs 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "--precision bf16 runs on the CUDA executor only")) << r.out;
  EXPECT_FALSE(file_exists(run_dir + "/train_bf16"));
  // A missing checkpoint is named.
  r = run("eval --checkpoint " + run_dir + "/nope.safetensors --data " + data);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, run_dir + "/nope.safetensors")) << r.out;
  std::system(("rm -rf " + data + " " + run_dir).c_str());
}
