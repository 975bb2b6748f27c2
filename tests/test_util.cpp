#include "test_util.h"
#ifdef DSFUSE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
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

const std::vector<std::string>& fixture_models() {
  static const std::vector<std::string> k = {"llama-tiny",       "qwen2-tiny",       "deepseek-v2-lite-tiny",
                                             "deepseek-v2-tiny", "deepseek-v3-tiny", "deepseek-v3-tiny-fp8"};
  return k;
}

std::string param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (auto& c : s)
    if (c == '-') c = '_';
  return s;
}

std::vector<int32_t> ref_ids(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  EXPECT_TRUE(t) << name << " missing in " << f.path();
  std::vector<int32_t> v;
  if (!t) return v;
  const TensorView tv = f.view(*t);
  for (int64_t i = 0; i < tv.numel(); ++i) v.push_back(static_cast<int32_t>(tv.ptr<int64_t>()[i]));
  return v;
}

std::vector<float> ref_floats(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  EXPECT_TRUE(t) << name << " missing in " << f.path();
  if (!t) return {};
  const TensorView tv = f.view(*t);
  return std::vector<float>(tv.ptr<float>(), tv.ptr<float>() + tv.numel());
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return a.size() == b.size() ? std::sqrt(num / den) : 1e9;
}

std::string shell(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) {
    *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

std::filesystem::path npm_test_dir(std::string* why) {
  namespace fs = std::filesystem;
  int rc = 0;
  shell("command -v node && command -v npm", &rc);
  if (rc != 0) {
    *why = "node/npm not installed";
    return {};
  }
  const fs::path src = fs::path(DSFUSE_TEST_DATA).parent_path() / "js";
  const fs::path dir = fs::path(DSFUSE_BIN).parent_path() / "js-tests";
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(src))
    if (e.is_regular_file()) fs::copy_file(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing);
  if (!fs::exists(dir / "node_modules" / "openai") || !fs::exists(dir / "node_modules" / "playwright-core")) {
    const std::string log = shell("cd " + dir.string() + " && npm ci --no-audit --no-fund --silent", &rc);
    if (rc != 0) {
      *why = "npm could not install tests/js packages (registry unreachable?): " + log;
      return {};
    }
  }
  return dir;
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

// (documented in test_util.h)
std::vector<std::vector<int32_t>> run_concurrently(Engine& e, const std::vector<EngineRequest>& reqs,
                                                   std::vector<EngineEvent>* finals) {
  std::vector<std::vector<int32_t>> out(reqs.size());
  std::vector<EngineEvent> fin(reqs.size());
  std::mutex m;
  std::condition_variable cv;
  size_t done = 0;
  bool submitted = false;
  // The engine thread may run a step before the last request is submitted (a loaded 2-core CI machine):
  // its callbacks wait until all are in, so every request after the first step's shares the next steps.
  auto on_event = [&](size_t i, const EngineEvent& ev) {
    {
      std::unique_lock<std::mutex> lk(m);
      cv.wait(lk, [&] { return submitted; });
    }
    if (ev.piece.token >= 0) out[i].push_back(ev.piece.token);
    if (ev.finished) {
      std::lock_guard<std::mutex> lk(m);
      fin[i] = ev;
      ++done;
      cv.notify_all();
    }
  };
  auto release = [&] {
    std::lock_guard<std::mutex> lk(m);
    submitted = true;
    cv.notify_all();
  };
  try {
    for (size_t i = 0; i < reqs.size(); ++i)
      e.submit(reqs[i], [&on_event, i](const EngineEvent& ev) { on_event(i, ev); });
  } catch (...) {
    release();
    throw;
  }
  release();
  std::unique_lock<std::mutex> lk(m);
  EXPECT_TRUE(cv.wait_for(lk, std::chrono::seconds(120), [&] { return done == reqs.size(); }));
  if (finals) *finals = fin;
  return out;
}

}  // namespace dsfuse::test
