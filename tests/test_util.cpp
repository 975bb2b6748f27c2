#include "test_util.h"
#ifdef DSFUSE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

namespace dsfuse::test {

bool cuda_available() {
#ifdef DSFUSE_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::string cuda_skip_reason() {
#ifdef DSFUSE_HAVE_CUDA
  return "built with CUDA, but no CUDA device is present";
#else
  return "built without CUDA (DSFUSE_CUDA=OFF or no nvcc)";
#endif
}

static std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

CmdResult run_dsfuse(const std::string& args, const std::string& stdin_path) {
  char tmpl[] = "/tmp/dsfuse_test_XXXXXX";
  const char* dir = mkdtemp(tmpl);
  std::string d = dir ? dir : "/tmp";
  std::string cmd = std::string(DSFUSE_BIN) + " " + args + " >" + d + "/out 2>" + d + "/err <" + stdin_path;
  int rc = std::system(cmd.c_str());
  CmdResult r{WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc), slurp(d + "/out"), slurp(d + "/err")};
  std::filesystem::remove_all(d);
  return r;
}

}  // namespace dsfuse::test
