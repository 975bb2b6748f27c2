// safetensors reading through mmap: single files and sharded checkpoints
// (model.safetensors.index.json). Every header is validated before any tensor is touched.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dsfuse {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
};

// Parses and validates a safetensors header from the first `size` bytes of a file named `what`
// (for error messages). Checks: header length within the file, valid JSON object, known dtypes,
// non-negative shapes, offsets within the data section, byte size matching shape × dtype, no
// overlapping tensors. Returns the tensors sorted by name; `data_offset` receives 8 + header length.
std::vector<TensorInfo> parse_safetensors_header(const uint8_t* data, size_t size, const std::string& what,
                                                 uint64_t* data_offset);

// A read-only memory map of one file.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  TensorView view(const TensorInfo& t) const;  // zero-copy view into the mapping
  const std::filesystem::path& path() const { return map_->path(); }

 private:
  std::unique_ptr<MappedFile> map_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  uint64_t data_offset_ = 0;
};

// All tensors of a checkpoint directory (or one .safetensors file), with use tracking so the loader can
// name tensors that were expected but missing, or present but never used.
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& dir_or_file);
  // A checkpoint without files (vLLM's "dummy" load format, for benchmarks): get(name, shape) creates a
  // random bf16 tensor of the requested shape on first use (norm weights are ones, e_score_correction_bias
  // zeros, other weights uniform with std 0.02). has() is true only for tensors already created.
  // views = true (for loaders that copy every weight elsewhere, i.e. device backends): the random tensors are
  // read-only views into one buffer of the same values, made once, instead of a host allocation per tensor
  // (page faults dominated loading: 19 s for the 15 GB of R1-Distill-Qwen-7B). Same values either way.
  static std::unique_ptr<Checkpoint> synthetic(uint64_t seed = 0, bool views = false);
  bool is_synthetic() const { return synthetic_; }
  // Drops a synthetic tensor once it has been converted (quantized, copied to a device); views die with it. A
  // later get(name, shape) makes it again with the same values.
  void release(const std::string& name);

  bool has(const std::string& name) const;
  // Returns the tensor, marking it used; throws an Error naming the tensor and the checkpoint if absent.
  TensorView get(const std::string& name);
  // Like get() but checks dtype class and shape, naming tensor/file on mismatch.
  TensorView get(const std::string& name, std::initializer_list<int64_t> shape);
  const TensorInfo& info(const std::string& name) const;
  std::string file_of(const std::string& name) const;

  void mark_ignored(const std::string& name);  // e.g. MTP layers: present, deliberately not loaded
  void mark_used(const std::string& name) { if (has(name)) used_.insert(name); }  // loaded by another rank
  std::vector<std::string> names() const;
  std::vector<std::string> unused() const;  // neither used nor ignored
  const std::vector<std::string>& ignored() const { return ignored_; }
  const std::filesystem::path& root() const { return root_; }

 private:
  Checkpoint() = default;
  bool synthetic_ = false, views_ = false;
  uint64_t seed_ = 0;
  struct Owned {
    TensorInfo info;
    std::vector<uint16_t> data;
    const uint16_t* view = nullptr;  // views_: the values in ext_ (data stays empty)
  };
  // views_: buffers with ext[j] = pool[j % pool size] for j < their length; a tensor of n values at pool offset
  // `off` is ext + off. A longer tensor gets a new, longer buffer; earlier ones live on (views into them may
  // still be held).
  std::vector<std::vector<uint16_t>> ext_;
  const uint16_t* synthetic_values(size_t off, size_t n);
  std::map<std::string, Owned> owned_;

  std::filesystem::path root_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>> where_;
  std::set<std::string> used_;
  std::vector<std::string> ignored_;
};

// Writes float32/int64/... tensors into a safetensors file (used by `dsfuse logits` and tools).
struct NamedTensor {
  std::string name;
  TensorView view;  // contiguous, CPU
};
void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors);

}  // namespace dsfuse
