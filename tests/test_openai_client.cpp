// The official `openai` npm client against `dsfuse serve` (tests/js/openai_client.mjs): models list, plain
// and streaming chat, completions, error cases. Needs node and npm (the package comes from the npm
// registry into the build directory); SKIPPED with the reason when they are missing.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>

#include "test_util.h"

namespace fs = std::filesystem;

namespace {

TEST(OpenAiNpmClient, ChatStreamCompletionsModelsErrors) {
  int rc = 0;
  std::string why;
  const fs::path dir = dsfuse::test::npm_test_dir(&why);
  if (dir.empty()) GTEST_SKIP() << why << ": the official openai npm client cannot run";

  // The server, as a user runs it, with an API key the client sends.
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    execl(DSFUSE_BIN, DSFUSE_BIN, "serve", "--port", "0", "--api-key", "test-key", nullptr);
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buf[256];
  while (text.find('\n') == std::string::npos) {
    const ssize_t n = read(out[0], buf, sizeof(buf));
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ASSERT_NE(text.find("listening on port"), std::string::npos) << text;
  const int port = std::stoi(text.substr(text.find("listening on port") + 18));
  const std::string res = dsfuse::test::shell("cd " + dir.string() + " && timeout 120 node openai_client.mjs http://127.0.0.1:" +
                                 std::to_string(port) + "/v1",
                             &rc);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  close(out[0]);
  std::printf("%s", res.c_str());
  EXPECT_EQ(rc, 0) << res;
  EXPECT_NE(res.find("all checks passed"), std::string::npos) << res;
}

}  // namespace
