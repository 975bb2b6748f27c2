#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

namespace dsfuse::test {

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
