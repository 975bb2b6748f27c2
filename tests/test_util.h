// Shared helpers for tests: fixture location and running the dsfuse binary.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "loader/safetensors.h"

namespace dsfuse::test {

// $DSFUSE_FIXTURES, else ../shared/fixtures next to the source tree.
inline std::filesystem::path fixtures_dir() {
  if (const char* e = std::getenv("DSFUSE_FIXTURES")) return e;
  return DSFUSE_DEFAULT_FIXTURES;
}

// Path to a fixture subdirectory; empty when missing (callers GTEST_SKIP with the reason).
inline std::filesystem::path fixture(const std::string& rel) {
  auto p = fixtures_dir() / rel;
  return std::filesystem::exists(p) ? p : std::filesystem::path();
}

#define DSFUSE_REQUIRE_FIXTURE(var, rel)                                                            \
  const std::filesystem::path var = ::dsfuse::test::fixture(rel);                                   \
  if (var.empty()) GTEST_SKIP() << "fixture " << (rel) << " not found under "                       \
                                << ::dsfuse::test::fixtures_dir() << " (set DSFUSE_FIXTURES)"

// The fixture models of every family, for tests parametrized over them:
//   INSTANTIATE_TEST_SUITE_P(Fixtures, MyTest, DSFUSE_FIXTURE_MODELS);
const std::vector<std::string>& fixture_models();
std::string param_name(const ::testing::TestParamInfo<std::string>& info);  // "llama-tiny" -> "llama_tiny"
#define DSFUSE_FIXTURE_MODELS ::testing::ValuesIn(::dsfuse::test::fixture_models()), ::dsfuse::test::param_name

// Tensors of a reference file (reference.safetensors): int64 ids as int32, float32 values.
std::vector<int32_t> ref_ids(const SafetensorsFile& f, const std::string& name);
std::vector<float> ref_floats(const SafetensorsFile& f, const std::string& name);
// ‖a − b‖ / ‖b‖
double rel_err(const std::vector<float>& a, const std::vector<float>& b);

// Runs `cmd` through the shell; returns stdout+stderr and sets *rc to the exit code.
std::string shell(const std::string& cmd, int* rc);

// tests/js (package.json + lock + scripts) copied into the build directory with its npm packages
// installed (once). Empty, with *why set, when node/npm are missing or the install failed.
std::filesystem::path npm_test_dir(std::string* why);

// Whether the CUDA backend was built and a device is present; the reason to skip otherwise.
bool cuda_available();
std::string cuda_skip_reason();
// DSFUSE_CUDA_F32 set (and not "0"): the CUDA backend runs in its exact f32 mode, so CUDA tests use f32 tolerances.
inline bool cuda_f32_mode() {
  const char* e = std::getenv("DSFUSE_CUDA_F32");
  return e && *e && std::string(e) != "0";
}

struct CmdResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs `dsfuse <args>` (args are passed to the shell as written) and captures stdout/stderr.
CmdResult run_dsfuse(const std::string& args, const std::string& stdin_path = "/dev/null");

// Submits all requests to one engine and waits for them (120 s at most); returns the generated ids per request
// (and each request's final event). The engine's callbacks wait until every request is submitted, so all but the
// first step's requests share the following steps even when the engine thread runs ahead of the submitting one.
std::vector<std::vector<int32_t>> run_concurrently(Engine& e, const std::vector<EngineRequest>& reqs,
                                                   std::vector<EngineEvent>* finals = nullptr);

}  // namespace dsfuse::test
