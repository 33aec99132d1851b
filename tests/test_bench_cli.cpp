// tests/test_bench_cli.cpp — `resunetpp-bench` (tools/bench/resunetpp_bench.cpp) as a user meets
// it, on the CPU: a small run must verify every kernel row before timing it, write JSON that
// parses and holds one row per distinct fused BN-ReLU-conv shape and a timeline whose per-op
// shares add up to the step; bad flags fail naming the flag. The binary's path comes from the
// RESUNETPP_BENCH compile definition (CMakeLists.txt).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <tuple>

#include "model/resunetpp.h"
#include "runtime/fileio.h"
#include "runtime/json.h"

#include "tests/run_command.h"

using namespace rpp;

namespace {

using Result = testing_util::CommandResult;

Result run(const std::string& args) { return testing_util::run_command(std::string(RESUNETPP_BENCH) + " " + args); }

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// Distinct conv shapes, and the number of nodes, of the fused graph's BN-ReLU-conv nodes.
std::pair<size_t, size_t> fused_shapes(int batch, int size) {
  ModelConfig cfg;
  cfg.fuse = true;
  const ModelGraph m = build_resunetpp(cfg, batch, size, size, /*training=*/true);
  std::set<std::tuple<int, int, int, int, int, int, int, int, int, int>> shapes;
  size_t nodes = 0;
  for (const Node& n : m.graph.nodes()) {
    if (n.op != OpKind::BnReluConv2d) continue;
    const cpu::Conv2dShape& s = n.conv.shape;
    shapes.insert({s.n, s.h, s.w, s.cin, s.cout, s.kh, s.kw, s.stride, s.pad, s.dil});
    ++nodes;
  }
  return {shapes.size(), nodes};
}

}  // namespace

TEST(BenchCli, CpuRunVerifiesEveryShapeAndWritesJson) {
  const std::string path = "/tmp/rpp_test_bench_cli_" + std::to_string(getpid()) + ".json";
  std::remove(path.c_str());
  const Result r = run("--device cpu --size 32 --batch 2 --repeats 2 --infer-batch 3 --json " + path);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "median µs")) << r.out;
  EXPECT_TRUE(has(r.out, "top 10 nodes")) << r.out;
  EXPECT_TRUE(has(r.out, "warning: median of 2 repeats")) << r.out;
  ASSERT_TRUE(file_exists(path)) << r.out;
  const json::Value v = json::parse(read_file(path), path);
  std::remove(path.c_str());

  EXPECT_EQ(v["tool"].as_string(), "resunetpp-bench");
  EXPECT_EQ(v["device"]["name"].as_string(), "cpu");
  EXPECT_EQ(v["settings"]["size"].as_int(), 32);
  EXPECT_EQ(v["settings"]["batch"].as_int(), 2);
  EXPECT_EQ(v["settings"]["repeats"].as_int(), 2);
  EXPECT_FALSE(v["date"].as_string().empty());
  EXPECT_EQ(v["failures"].as_int(), 0);
  EXPECT_TRUE(v["passed"].as_bool());

  // One verified, timed row per distinct shape; together they cover every fused node.
  const auto [shapes, nodes] = fused_shapes(2, 32);
  ASSERT_GT(shapes, 0u);
  const json::Value& ks = v["kernels"];
  ASSERT_EQ(ks.size(), shapes);
  EXPECT_EQ(v["kernel_shapes_total"].as_int(), int64_t(shapes));
  size_t covered = 0;
  for (size_t i = 0; i < ks.size(); ++i) {
    const json::Value& k = ks[i];
    SCOPED_TRACE(k["shape_text"].as_string());
    EXPECT_EQ(k["status"].as_string(), "ok");
    covered += k["nodes"].size();
    EXPECT_GT(k["flops"].as_int(), 0);
    const json::Value& checks = k["verification"];
    ASSERT_GE(checks.size(), 1u);
    for (size_t c = 0; c < checks.size(); ++c) {
      EXPECT_TRUE(checks[c]["passed"].as_bool());
      ASSERT_TRUE(checks[c]["max_error"].is_number());
      EXPECT_LT(checks[c]["max_error"].as_double(), checks[c]["tolerance"].as_double());
      EXPECT_LE(checks[c]["tolerance"].as_double(), 1e-4);
      EXPECT_GT(checks[c]["checked_outputs"].as_int(), 0);
    }
    const json::Value& ts = k["timings"];
    ASSERT_GE(ts.size(), 1u);
    for (size_t t = 0; t < ts.size(); ++t) {
      EXPECT_GT(ts[t]["median_us"].as_double(), 0.0);
      EXPECT_EQ(ts[t]["repeats"].as_int(), 2);
      EXPECT_GT(ts[t]["gflop_per_s"].as_double(), 0.0);
    }
  }
  EXPECT_EQ(covered, nodes);

  // The timeline: every node timed, per-op shares summing to the step, a finite loss.
  const json::Value& tl = v["timeline"];
  EXPECT_TRUE(tl["loss_finite"].as_bool());
  EXPECT_GT(tl["images_per_s"].as_double(), 0.0);
  const int64_t n_nodes = tl["nodes"].as_int();
  EXPECT_EQ(int64_t(tl["per_node"].size()), n_nodes);
  double pct = 0, ms = 0;
  int64_t count = 0;
  const json::Value& ops = tl["by_op"];
  for (size_t i = 0; i < ops.size(); ++i) {
    pct += ops[i]["percent"].as_double();
    ms += ops[i]["ms"].as_double();
    count += ops[i]["count"].as_int();
  }
  EXPECT_NEAR(pct, 100.0, 0.01);
  EXPECT_EQ(count, n_nodes);
  EXPECT_NEAR(ms, tl["profiled_step_ms"].as_double(), 1e-6 * ms + 1e-9);
  EXPECT_EQ(tl["top_nodes"].size(), std::min<size_t>(10, size_t(n_nodes)));

  // Inference: batch 1 (latency) and --infer-batch (throughput), finite logits, consistent rates.
  const json::Value& inf = v["inference"];
  ASSERT_EQ(inf.size(), 2u);
  const int64_t batches[2] = {1, 3};
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(inf[i]["batch"].as_int(), batches[i]);
    EXPECT_TRUE(inf[i]["logits_finite"].as_bool());
    const double ms = inf[i]["latency_ms"].as_double();
    EXPECT_GT(ms, 0.0);
    EXPECT_NEAR(inf[i]["images_per_s"].as_double(), double(batches[i]) / (ms * 1e-3),
                1e-6 * inf[i]["images_per_s"].as_double());
  }
}

// A row whose output fails its check is reported FAILED, without any timing, and the exit status
// says so. The RPP_BENCH_CORRUPT_ROW hook perturbs one output element of a row before its check;
// --filter c2.c1 keeps rows 2 (c2.c1.2) and 3 (c2.c1.5), and row 3 is corrupted.
TEST(BenchCli, FailedVerificationGivesNoTimingAndExitStatus3) {
  const std::string path = "/tmp/rpp_test_bench_cli_fail_" + std::to_string(getpid()) + ".json";
  std::remove(path.c_str());
  const std::string cmd = "RPP_BENCH_CORRUPT_ROW=3 " + std::string(RESUNETPP_BENCH) +
                          " --device cpu --size 32 --batch 2 --repeats 1 --warmup 0 --no-timeline --no-inference --filter c2.c1"
                          " --json " + path + " > /dev/null 2>&1";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  const json::Value v = json::parse(read_file(path), path);
  std::remove(path.c_str());
  const json::Value& ks = v["kernels"];
  ASSERT_EQ(ks.size(), 2u);
  EXPECT_EQ(ks[0]["index"].as_int(), 2);
  EXPECT_EQ(ks[0]["status"].as_string(), "ok");
  EXPECT_GE(ks[0]["timings"].size(), 1u);
  EXPECT_EQ(ks[1]["index"].as_int(), 3);
  EXPECT_EQ(ks[1]["status"].as_string(), "FAILED");
  EXPECT_FALSE(ks[1]["verification"][0]["passed"].as_bool());
  EXPECT_GT(ks[1]["verification"][0]["max_error"].as_double(), 1e-4);
  EXPECT_EQ(ks[1]["timings"].size(), 0u);
  EXPECT_EQ(v["failures"].as_int(), 1);
  EXPECT_FALSE(v["passed"].as_bool());
}

TEST(BenchCli, FilterKeepsMatchingRows) {
  // (--no-inference: the kernel table is what is tested; the inference part is slow under ASan.)
  const Result r =
      run("--device cpu --size 32 --batch 2 --repeats 1 --warmup 0 --no-timeline --no-inference --filter d3.r1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "2 of ")) << r.out;
  EXPECT_FALSE(has(r.out, "timeline")) << r.out;
  const Result none = run("--device cpu --size 32 --batch 2 --no-timeline --no-inference --filter no-such-layer");
  EXPECT_EQ(none.code, 2) << none.out;
  EXPECT_TRUE(has(none.out, "no-such-layer")) << none.out;
}

TEST(BenchCli, HelpListsEveryFlag) {
  const Result r = run("--help");
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* f : {"--device", "--size", "--batch", "--repeats", "--warmup", "--filter", "--json",
                        "--no-timeline", "--no-inference", "--infer-batch", "--tf32", "--bf16", "--kernels", "--seed",
                        "--help"})
    EXPECT_TRUE(has(r.out, f)) << f;
}

TEST(BenchCli, BadFlagsFailNamingTheFlag) {
  Result r = run("--device cpu --bogus 3");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.out, "--bogus")) << r.out;
  r = run("--device cpu --size abc");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.out, "--size")) << r.out;
  r = run("--device cpu --size 60");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.out, "multiple of 8")) << r.out;
  r = run("--device tpu");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.out, "tpu")) << r.out;
  r = run("--device cpu --bf16");
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.out, "--bf16 needs a CUDA device")) << r.out;
  r = run("--device cpu stray");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.out, "'stray'")) << r.out;
  r = run("--device cpu --repeats");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.out, "--repeats needs a value")) << r.out;
}
