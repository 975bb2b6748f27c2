// Tensor parallelism in one process (a thread and a CPU backend per rank, in-process all-reduce): the
// sharding of heads, MLPs, experts and vocabulary gives the same logits as one rank, for every family.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "dsfuse/dsfuse.h"
#include "engine/engine.h"
#include "loader/safetensors.h"
#include "test_util.h"

using namespace dsfuse;

namespace {

using test::rel_err;

class TensorParallel : public ::testing::TestWithParam<std::string> {};

TEST_P(TensorParallel, TwoRanksMatchOne) {
  DSFUSE_REQUIRE_FIXTURE(dir, "models/" + GetParam());
  SafetensorsFile ref(dir / "reference.safetensors");
  const auto ids = test::ref_ids(ref, "ids_2");
  const auto want = test::ref_floats(ref, "logits_2");
  LoadOptions o;
  o.tensor_parallel = 2;
  auto tp = Model::load(dir, o);
  // Full forward, then incremental through the sharded KV caches.
  auto seq = tp->new_sequence(static_cast<int64_t>(ids.size()));
  std::vector<float> full, inc, step;
  tp->forward(*seq, ids, full, true);
  auto seq2 = tp->new_sequence(static_cast<int64_t>(ids.size()));
  for (size_t t = 0; t < ids.size(); ++t) {
    tp->forward(*seq2, std::span<const int32_t>(&ids[t], 1), step, false);
    inc.insert(inc.end(), step.begin(), step.end());
  }
  const double tol = GetParam().find("fp8") != std::string::npos ? 5e-3 : 1e-4;
  std::printf("[tp] %-22s 2 ranks vs Transformers: full %.3e incremental %.3e\n", GetParam().c_str(), rel_err(full, want),
              rel_err(inc, want));
  EXPECT_LE(rel_err(full, want), tol);
  EXPECT_LE(rel_err(inc, want), tol);
  // The serving engine drives the group like any model (batched, paged).
  Engine e(*tp, nullptr);
  EngineRequest r;
  r.prompt_ids.assign(ids.begin(), ids.begin() + 11);
  r.sampling.temperature = 0;
  r.max_new_tokens = 6;
  r.ignore_eos = true;
  auto one = Model::load(dir);
  Engine e1(*one, nullptr);
  EXPECT_EQ(e.generate(r).ids, e1.generate(r).ids);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TensorParallel, DSFUSE_FIXTURE_MODELS);

TEST(TensorParallelErrors, IndivisibleHeadsAreAClearError) {
  DSFUSE_REQUIRE_FIXTURE(dir, "models/qwen2-tiny");  // 6 heads, 2 kv heads
  LoadOptions o;
  o.tensor_parallel = 4;
  try {
    Model::load(dir, o);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("not divisible by the tensor-parallel size 4"), std::string::npos) << e.what();
  }
}

}  // namespace
