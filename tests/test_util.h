// Shared helpers for tests: fixture location and running the dsfuse binary.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

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

// Whether the CUDA backend was built and a device is present; the reason to skip otherwise.
bool cuda_available();
std::string cuda_skip_reason();

struct CmdResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs `dsfuse <args>` (args are passed to the shell as written) and captures stdout/stderr.
CmdResult run_dsfuse(const std::string& args, const std::string& stdin_path = "/dev/null");

}  // namespace dsfuse::test
