#include "loader/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

namespace dsfuse {

using json = nlohmann::json;
namespace fs = std::filesystem;

static constexpr uint64_t kMaxHeader = 100ull << 20;  // same cap as the reference implementation

std::vector<TensorInfo> parse_safetensors_header(const uint8_t* data, size_t size, const std::string& what,
                                                 uint64_t* data_offset) {
  DSFUSE_CHECK(size >= 8, what, ": not a safetensors file (", size, " bytes, need at least 8)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  DSFUSE_CHECK(n <= size - 8, what, ": header length ", n, " runs past end of file (file is ", size, " bytes)");
  DSFUSE_CHECK(n <= kMaxHeader, what, ": header length ", n, " exceeds the 100 MiB limit");
  DSFUSE_CHECK(n >= 2, what, ": header length ", n, " too small for a JSON object");
  const uint64_t data_size = size - 8 - n;
  json h;
  try {
    h = json::parse(reinterpret_cast<const char*>(data + 8), reinterpret_cast<const char*>(data + 8 + n));
  } catch (const json::exception& e) {
    fail(cat(what, ": header is not valid JSON (", e.what(), ")"));
  }
  DSFUSE_CHECK(h.is_object(), what, ": header must be a JSON object");
  std::vector<TensorInfo> out;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      DSFUSE_CHECK(it->is_object(), what, ": __metadata__ must be an object");
      continue;
    }
    const json& e = *it;
    const std::string where = cat(what, ": tensor '", name, "'");
    DSFUSE_CHECK(e.is_object(), where, ": entry must be an object");
    DSFUSE_CHECK(e.contains("dtype") && e["dtype"].is_string(), where, ": missing or non-string 'dtype'");
    DSFUSE_CHECK(e.contains("shape") && e["shape"].is_array(), where, ": missing or non-array 'shape'");
    DSFUSE_CHECK(e.contains("data_offsets") && e["data_offsets"].is_array() && e["data_offsets"].size() == 2,
                 where, ": 'data_offsets' must be [begin, end]");
    TensorInfo t;
    t.name = name;
    const std::string ds = e["dtype"].get<std::string>();
    DSFUSE_CHECK(dtype_from_safetensors(ds, &t.dtype), where, ": unsupported dtype '", ds,
                 "' (supported: F32, BF16, F16, F8_E4M3, I8, I32, I64)");
    DSFUSE_CHECK(e["shape"].size() <= kMaxDims, where, ": rank ", e["shape"].size(), " exceeds ", kMaxDims);
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      DSFUSE_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), where,
                   ": shape entries must be non-negative integers");
      uint64_t v = d.get<uint64_t>();
      DSFUSE_CHECK(v == 0 || numel <= (1ull << 62) / v, where, ": shape overflows");
      numel *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    for (const auto& o : e["data_offsets"])
      DSFUSE_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), where,
                   ": data_offsets must be non-negative integers");
    t.begin = e["data_offsets"][0].get<uint64_t>();
    t.end = e["data_offsets"][1].get<uint64_t>();
    DSFUSE_CHECK(t.begin <= t.end, where, ": data_offsets begin ", t.begin, " > end ", t.end);
    DSFUSE_CHECK(t.end <= data_size, where, ": data_offsets [", t.begin, ", ", t.end,
                 ") out of range (data section is ", data_size, " bytes; file truncated?)");
    const uint64_t want = numel * dtype_size(t.dtype);
    DSFUSE_CHECK(t.end - t.begin == want, where, ": holds ", t.end - t.begin, " bytes but shape × ", ds,
                 " needs ", want);
    out.push_back(std::move(t));
  }
  std::vector<const TensorInfo*> by_off;
  for (const auto& t : out) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  for (size_t i = 1; i < by_off.size(); ++i) {
    const TensorInfo *a = by_off[i - 1], *b = by_off[i];
    if (a->end == a->begin || b->end == b->begin) continue;  // empty tensors overlap nothing
    DSFUSE_CHECK(b->begin >= a->end, what, ": tensors '", a->name, "' and '", b->name, "' overlap (bytes ",
                 b->begin, "..", std::min(a->end, b->end), ")");
  }
  std::sort(out.begin(), out.end(), [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  *data_offset = 8 + n;
  return out;
}

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DSFUSE_CHECK(fd >= 0, path.string(), ": cannot open (", std::strerror(errno), ")");
  struct stat st{};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(cat(path.string(), ": not a regular file"));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail(cat(path.string(), ": mmap failed (", std::strerror(errno), ")"));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) munmap(const_cast<uint8_t*>(data_), size_);
}

SafetensorsFile::SafetensorsFile(const fs::path& path) : map_(std::make_unique<MappedFile>(path)) {
  tensors_ = parse_safetensors_header(map_->data(), map_->size(), path.string(), &data_offset_);
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// A contiguous view of `t`'s shape and dtype over `data`.
static TensorView view_of(const TensorInfo& t, const void* data) {
  TensorView v;
  v.data = const_cast<void*>(data);
  v.dtype = t.dtype;
  v.ndim = static_cast<int>(t.shape.size());
  int64_t st = 1;
  for (int k = v.ndim - 1; k >= 0; --k) {
    v.shape[k] = t.shape[k];
    v.stride[k] = st;
    st *= t.shape[k];
  }
  return v;
}

TensorView SafetensorsFile::view(const TensorInfo& t) const { return view_of(t, map_->data() + data_offset_ + t.begin); }

Checkpoint::Checkpoint(const fs::path& dir_or_file) : root_(dir_or_file) {
  std::vector<fs::path> files;
  std::vector<std::pair<std::string, std::string>> index_entries;  // tensor -> shard, from the index
  if (fs::is_regular_file(dir_or_file)) {
    files.push_back(dir_or_file);
  } else {
    DSFUSE_CHECK(fs::is_directory(dir_or_file), dir_or_file.string(), ": no such checkpoint directory");
    const fs::path index = dir_or_file / "model.safetensors.index.json";
    if (fs::exists(index)) {
      json j;
      try {
        std::ifstream f(index);
        j = json::parse(f);
      } catch (const json::exception& e) {
        fail(cat(index.string(), ": not valid JSON (", e.what(), ")"));
      }
      DSFUSE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index.string(),
                   ": missing object 'weight_map'");
      std::set<std::string> shards;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        DSFUSE_CHECK(it->is_string(), index.string(), ": weight_map['", it.key(), "'] must be a file name");
        shards.insert(it->get<std::string>());
      }
      for (const auto& s : shards) {
        DSFUSE_CHECK(s.find('/') == std::string::npos && s != ".." , index.string(), ": shard name '", s,
                     "' must be a plain file name");
        DSFUSE_CHECK(fs::exists(dir_or_file / s), index.string(), ": shard '", s, "' is missing");
        files.push_back(dir_or_file / s);
      }
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
        index_entries.emplace_back(it.key(), it->get<std::string>());
    } else if (fs::exists(dir_or_file / "model.safetensors")) {
      files.push_back(dir_or_file / "model.safetensors");
    } else {
      for (const auto& e : fs::directory_iterator(dir_or_file))
        if (e.path().extension() == ".safetensors" && e.path().filename() != "reference.safetensors")
          files.push_back(e.path());
      std::sort(files.begin(), files.end());
      DSFUSE_CHECK(!files.empty(), dir_or_file.string(),
                   ": no model.safetensors, model.safetensors.index.json or *.safetensors found");
    }
  }
  for (const auto& p : files) {
    files_.push_back(std::make_unique<SafetensorsFile>(p));
    const size_t fi = files_.size() - 1;
    for (const auto& t : files_.back()->tensors()) {
      auto [it, fresh] = where_.emplace(t.name, std::make_pair(fi, &t));
      DSFUSE_CHECK(fresh, "tensor '", t.name, "' appears in both ", files_[it->second.first]->path().filename().string(),
                   " and ", p.filename().string());
    }
  }
  // Every tensor the index names must be in the shard it names.
  for (const auto& [tensor, shard] : index_entries) {
    auto it = where_.find(tensor);
    DSFUSE_CHECK(it != where_.end() && files_[it->second.first]->path().filename() == shard,
                 "model.safetensors.index.json names tensor '", tensor, "' in shard '", shard,
                 "' but that shard does not contain it");
  }
}

namespace {
// The random values of dummy weights: 2^25 bf16 values (xorshift64*), made once per process by up to 16 threads.
const std::vector<uint16_t>& synthetic_pool() {
  static const std::vector<uint16_t> pool = [] {
    std::vector<uint16_t> p(size_t{1} << 25);
    const int64_t chunk = int64_t{1} << 20, nchunks = static_cast<int64_t>(p.size()) / chunk;
    auto fill = [&](int64_t c) {
      uint64_t s = 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(c + 1) * 0xD1B54A32D192ED03ull);
      for (int64_t i = c * chunk; i < (c + 1) * chunk; ++i) {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        const float u = static_cast<float>((s * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
        p[static_cast<size_t>(i)] = f32_to_bf16((2.0f * u - 1.0f) * 0.0346410f);
      }
    };
    std::vector<std::thread> th;
    std::atomic<int64_t> next{0};
    const int nt = static_cast<int>(std::max(1u, std::min(16u, std::thread::hardware_concurrency())));
    for (int t = 0; t < nt; ++t)
      th.emplace_back([&] {
        for (int64_t c; (c = next++) < nchunks;) fill(c);
      });
    for (auto& t : th) t.join();
    return p;
  }();
  return pool;
}
}  // namespace

const uint16_t* Checkpoint::synthetic_values(size_t off, size_t n) {
  const std::vector<uint16_t>& pool = synthetic_pool();
  const size_t P = pool.size();
  if (ext_.empty() || ext_.back().size() < P + n) {
    // Sized for the largest tensor asked for so far (with room to grow by half), filled with the pool repeated.
    const size_t len = P + std::max(n, ext_.empty() ? size_t{0} : ext_.back().size() / 2);
    std::vector<uint16_t> e(len);
    for (size_t i = 0; i < len; i += P) std::memcpy(e.data() + i, pool.data(), std::min(P, len - i) * sizeof(uint16_t));
    ext_.push_back(std::move(e));
  }
  return ext_.back().data() + off;
}

std::unique_ptr<Checkpoint> Checkpoint::synthetic(uint64_t seed, bool views) {
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  c->synthetic_ = true;
  c->views_ = views;
  c->seed_ = seed;
  c->root_ = "<dummy weights>";
  return c;
}

void Checkpoint::release(const std::string& name) {
  // A dummy tensor is dropped altogether: asked for again (with its shape), it is made again, identically.
  if (synthetic_) owned_.erase(name);
}

bool Checkpoint::has(const std::string& name) const { return where_.count(name) > 0 || owned_.count(name) > 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  if (auto o = owned_.find(name); o != owned_.end()) return o->second.info;
  auto it = where_.find(name);
  DSFUSE_CHECK(it != where_.end(), "missing tensor '", name, "' in checkpoint ", root_.string());
  return *it->second.second;
}

std::string Checkpoint::file_of(const std::string& name) const {
  if (synthetic_) return root_.string();
  auto it = where_.find(name);
  return it == where_.end() ? root_.string() : files_[it->second.first]->path().string();
}

TensorView Checkpoint::get(const std::string& name) {
  const TensorInfo& t = info(name);
  used_.insert(name);
  if (auto o = owned_.find(name); o != owned_.end()) {
    if (o->second.view) return view_of(t, o->second.view);
    DSFUSE_CHECK(!o->second.data.empty() || t.end == 0, "dummy tensor '", name, "' was released");
    return view_of(t, o->second.data.data());
  }
  return files_[where_.at(name).first]->view(t);
}

TensorView Checkpoint::get(const std::string& name, std::initializer_list<int64_t> shape) {
  if (synthetic_ && !owned_.count(name)) {
    Owned o;
    o.info.name = name;
    o.info.dtype = DType::BF16;
    o.info.shape.assign(shape.begin(), shape.end());
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    o.info.end = static_cast<uint64_t>(n) * 2;
    const bool ones = shape.size() == 1 && name.size() >= 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0;
    const bool zeros = shape.size() == 1 && !ones;
    if (ones || zeros) {
      o.data.assign(static_cast<size_t>(n), ones ? f32_to_bf16(1.0f) : 0);
    } else {
      if (!views_) o.data.resize(static_cast<size_t>(n));
      // Uniform in [-a, a) with std 0.02 (a = 0.02 * sqrt(3)): slices of one shared pool of 2^25 random values
      // (synthetic_pool), each tensor starting at an offset given by its name's hash, so that a 16B model's
      // weights take seconds (memcpy speed), not minutes.
      const std::vector<uint16_t>& pool = synthetic_pool();
      const size_t P = pool.size();
      size_t off = static_cast<size_t>(((seed_ + 0x9E3779B97F4A7C15ull) ^ std::hash<std::string>{}(name)) % P);
      if (views_) {
        o.view = synthetic_values(off, static_cast<size_t>(n));
      } else {
        for (size_t i = 0; i < o.data.size();) {
          const size_t m = std::min(o.data.size() - i, P - off);
          std::memcpy(o.data.data() + i, pool.data() + off, m * sizeof(uint16_t));
          i += m;
          off = (off + m) % P;
        }
      }
    }
    owned_.emplace(name, std::move(o));
  }
  TensorView v = get(name);
  bool ok = static_cast<size_t>(v.ndim) == shape.size();
  int i = 0;
  for (int64_t s : shape) ok = ok && v.shape[i++] == s;
  if (!ok) {
    TensorView want(nullptr, v.dtype, shape);
    fail(cat("tensor '", name, "' in ", file_of(name), " has shape ", v.shape_str(), ", expected ", want.shape_str()));
  }
  return v;
}

void Checkpoint::mark_ignored(const std::string& name) {
  if (has(name) && !used_.count(name)) ignored_.push_back(name);
  used_.insert(name);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> n;
  for (const auto& [k, v] : where_) n.push_back(k);
  for (const auto& [k, v] : owned_) n.push_back(k);
  return n;
}

std::vector<std::string> Checkpoint::unused() const {
  std::vector<std::string> n;
  for (const auto& [k, v] : where_)
    if (!used_.count(k)) n.push_back(k);
  for (const auto& [k, v] : owned_)
    if (!used_.count(k)) n.push_back(k);
  return n;
}

void write_safetensors(const fs::path& path, const std::vector<NamedTensor>& tensors) {
  json h = json::object();
  uint64_t off = 0;
  for (const auto& t : tensors) {
    DSFUSE_CHECK(t.view.contiguous(), "write_safetensors: tensor '", t.name, "' is not contiguous");
    std::vector<int64_t> shape(t.view.shape.begin(), t.view.shape.begin() + t.view.ndim);
    h[t.name] = {{"dtype", dtype_name(t.view.dtype)}, {"shape", shape}, {"data_offsets", {off, off + t.view.nbytes()}}};
    off += t.view.nbytes();
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs.push_back(' ');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  DSFUSE_CHECK(f.good(), path.string(), ": cannot open for writing");
  uint64_t n = hs.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  f.write(len, 8);
  f.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  for (const auto& t : tensors) f.write(static_cast<const char*>(t.view.data), static_cast<std::streamsize>(t.view.nbytes()));
  DSFUSE_CHECK(f.good(), path.string(), ": write failed");
}

}  // namespace dsfuse
