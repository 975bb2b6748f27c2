#include "engine/default_model.h"

#include <unistd.h>

#include <cstdlib>

#include "core/error.h"

namespace dsfuse {

namespace fs = std::filesystem;

std::vector<fs::path> default_model_candidates() {
  std::vector<fs::path> c;
  if (const char* e = std::getenv("DSFUSE_DEFAULT_MODEL")) c.emplace_back(e);
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) {
    const fs::path exe_dir = fs::path(std::string(buf, static_cast<size_t>(n))).parent_path();
    c.push_back(exe_dir.parent_path() / "share" / "dsfuse" / "models" / "default");
    c.push_back(exe_dir / "models" / "default");
  }
#ifdef DSFUSE_SOURCE_MODEL_DIR
  c.emplace_back(DSFUSE_SOURCE_MODEL_DIR);
#endif
  return c;
}

fs::path default_model_dir() {
  std::string looked;
  for (const auto& p : default_model_candidates()) {
    if (fs::exists(p / "config.json")) return p;
    looked += "\n  " + p.string();
  }
  fail(cat("no --model given and the embedded default model was not found; looked in:", looked));
}

}  // namespace dsfuse
