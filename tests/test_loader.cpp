// Loader errors: every bad checkpoint gets a clear error naming what is wrong, never a crash.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "dsfuse/dsfuse.h"
#include "loader/config.h"
#include "loader/safetensors.h"
#include "test_util.h"

using namespace dsfuse;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("dsfuse_loader_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A raw safetensors file: 8-byte length, header text, then `data_bytes` zero bytes.
std::string raw_st(const std::string& header, size_t data_bytes, int64_t claimed_len = -1) {
  std::string s(8, '\0');
  uint64_t n = claimed_len >= 0 ? static_cast<uint64_t>(claimed_len) : header.size();
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\0');
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

std::string parse_error(const std::string& file) {
  return error_of([&] {
    uint64_t off;
    parse_safetensors_header(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "x.safetensors", &off);
  });
}

TEST(Safetensors, ParsesValidHeader) {
  const std::string f = raw_st(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"format":"pt"}})", 16);
  uint64_t off = 0;
  auto t = parse_safetensors_header(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "x", &off);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].name, "a");
  EXPECT_EQ(t[0].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(off, 8 + f.size() - 8 - 16);
}

TEST(Safetensors, Errors) {
  EXPECT_NE(parse_error("abc").find("not a safetensors file"), std::string::npos);
  EXPECT_NE(parse_error(raw_st("{}", 0, 1000)).find("header length 1000 runs past end of file"), std::string::npos);
  EXPECT_NE(parse_error(raw_st("{not json", 0)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(parse_error(raw_st("[1,2]", 0)).find("must be a JSON object"), std::string::npos);
  EXPECT_NE(parse_error(raw_st(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1)).find("unsupported dtype 'Q4'"),
            std::string::npos);
  EXPECT_NE(parse_error(raw_st(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8)).find("out of range"),
            std::string::npos);
  EXPECT_NE(parse_error(raw_st(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16)).find("needs 12"),
            std::string::npos);
  EXPECT_NE(parse_error(raw_st(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 24))
                .find("overlap"),
            std::string::npos);
  EXPECT_NE(parse_error(raw_st(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)).find("non-negative"),
            std::string::npos);
  EXPECT_NE(parse_error(raw_st(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8)).find("begin 8 > end 4"),
            std::string::npos);
  EXPECT_NE(parse_error(raw_st(R"({"w":{"dtype":"F32","shape":[1]}})", 4)).find("data_offsets"), std::string::npos);
}

TEST(Safetensors, AllDtypesRoundTrip) {
  fs::path d = temp_dir("dtypes");
  std::vector<float> f32 = {1, 2};
  std::vector<uint16_t> b16 = {0x3f80, 0x4000};
  std::vector<uint8_t> f8 = {0x38, 0x40};
  std::vector<int8_t> i8 = {-1, 1};
  std::vector<int32_t> i32 = {-5, 7};
  std::vector<int64_t> i64 = {1ll << 40, -3};
  write_safetensors(d / "m.safetensors", {{"f32", TensorView(f32.data(), DType::F32, {2})},
                                          {"bf16", TensorView(b16.data(), DType::BF16, {2})},
                                          {"f16", TensorView(b16.data(), DType::F16, {2})},
                                          {"f8", TensorView(f8.data(), DType::F8E4M3, {2})},
                                          {"i8", TensorView(i8.data(), DType::I8, {2})},
                                          {"i32", TensorView(i32.data(), DType::I32, {2})},
                                          {"i64", TensorView(i64.data(), DType::I64, {1, 2})}});
  SafetensorsFile f(d / "m.safetensors");
  EXPECT_EQ(f.tensors().size(), 7u);
  EXPECT_EQ(f.view(*f.find("bf16")).dtype, DType::BF16);
  EXPECT_EQ(bf16_to_f32(f.view(*f.find("bf16")).ptr<uint16_t>()[1]), 2.0f);
  EXPECT_EQ(f8e4m3_to_f32(f.view(*f.find("f8")).ptr<uint8_t>()[0]), 1.0f);
  EXPECT_EQ(f.view(*f.find("i64")).ptr<int64_t>()[0], 1ll << 40);
  EXPECT_EQ(f.view(*f.find("i64")).shape_str(), "[1, 2]");
  EXPECT_EQ(f.view(*f.find("i32")).ptr<int32_t>()[0], -5);
  fs::remove_all(d);
}

// ---------------------------------------------------------------- model-level errors

// Copies a fixture model into a temp dir, letting `edit` change its tensors and config.
struct ModelCopy {
  fs::path dir;
  ModelCopy(const fs::path& src, const std::string& tag,
            const std::function<void(std::vector<NamedTensor>&, std::vector<std::vector<char>>&)>& edit = nullptr,
            const std::function<void(nlohmann::json&)>& edit_cfg = nullptr) {
    dir = temp_dir(tag);
    SafetensorsFile f(src / "model.safetensors");
    std::vector<NamedTensor> ts;
    for (const auto& t : f.tensors()) ts.push_back({t.name, f.view(t)});
    std::vector<std::vector<char>> keep;
    if (edit) edit(ts, keep);
    write_safetensors(dir / "model.safetensors", ts);
    auto cfg = nlohmann::json::parse(read_file(src / "config.json"));
    if (edit_cfg) edit_cfg(cfg);
    write_file(dir / "config.json", cfg.dump(2));
  }
  ~ModelCopy() { fs::remove_all(dir); }
};

std::string load_error(const fs::path& dir) {
  return error_of([&] { Model::load(dir); });
}

// Dummy weights: a released tensor is made again, with the same values, when asked for again (tensor-parallel
// ranks loading one after another each get the full tensor while the host holds about one at a time).
TEST(Safetensors, SyntheticReleaseRemakesSameValues) {
  auto ck = Checkpoint::synthetic(7);
  const std::string name = "model.layers.0.mlp.down_proj.weight";
  TensorView a = ck->get(name, {64, 48});
  const std::vector<uint16_t> first(static_cast<const uint16_t*>(a.data), static_cast<const uint16_t*>(a.data) + 64 * 48);
  ck->release(name);
  EXPECT_FALSE(ck->has(name));
  TensorView b = ck->get(name, {64, 48});
  const std::vector<uint16_t> again(static_cast<const uint16_t*>(b.data), static_cast<const uint16_t*>(b.data) + 64 * 48);
  EXPECT_EQ(first, again);
  EXPECT_NE(std::count(first.begin(), first.end(), first[0]), static_cast<long>(first.size()));  // not constant
}

// The view mode (device backends) gives the same values as the copying one, for tensors shorter and longer
// than the value pool (2^25), again after a release, and while earlier views are still held.
TEST(Safetensors, SyntheticViewsEqualCopies) {
  auto copies = Checkpoint::synthetic(7);
  auto views = Checkpoint::synthetic(7, true);
  const std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> ts = {
      {"model.layers.0.mlp.down_proj.weight", {64, 48}},
      {"model.embed_tokens.weight", {6000, 6000}},  // 36M values: wraps around the pool
      {"model.layers.1.self_attn.q_proj.weight", {300, 7}},
      {"lm_head.weight", {9000, 6000}}};  // longer than the buffer so far: a new one, earlier views stay valid
  std::vector<TensorView> held;
  for (const auto& [name, shape] : ts) {
    const TensorView a = copies->get(name, {shape.first, shape.second});
    const TensorView b = views->get(name, {shape.first, shape.second});
    ASSERT_EQ(a.numel(), b.numel());
    EXPECT_EQ(std::memcmp(a.data, b.data, static_cast<size_t>(a.numel()) * 2), 0) << name;
    held.push_back(b);
  }
  EXPECT_EQ(std::memcmp(copies->get(ts[0].first).data, held[0].data, 64 * 48 * 2), 0);  // after later buffers
  const TensorView ones = views->get("model.norm.weight", {48});
  EXPECT_EQ(static_cast<const uint16_t*>(ones.data)[47], 0x3f80);  // norm weights are ones (bf16 1.0)
  views->release(ts[1].first);
  EXPECT_FALSE(views->has(ts[1].first));
  const TensorView again = views->get(ts[1].first, {6000, 6000});
  EXPECT_EQ(std::memcmp(again.data, copies->get(ts[1].first).data, size_t{6000} * 6000 * 2), 0);
}

TEST(ModelLoad, UnknownArchitectureNamesSupported) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/llama-tiny");
  ModelCopy m(src, "arch", nullptr, [](nlohmann::json& c) { c["architectures"] = {"MistralForCausalLM"}; });
  const std::string e = load_error(m.dir);
  EXPECT_NE(e.find("unsupported architecture 'MistralForCausalLM'"), std::string::npos) << e;
  EXPECT_NE(e.find("DeepseekV3ForCausalLM"), std::string::npos) << e;
}

TEST(ModelLoad, MissingConfigField) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/qwen2-tiny");
  ModelCopy m(src, "field", nullptr, [](nlohmann::json& c) { c.erase("hidden_size"); });
  EXPECT_NE(load_error(m.dir).find("missing field 'hidden_size'"), std::string::npos);
  ModelCopy m2(src, "field2", nullptr, [](nlohmann::json& c) { c["num_hidden_layers"] = "two"; });
  EXPECT_NE(load_error(m2.dir).find("'num_hidden_layers' must be an integer"), std::string::npos);
}

TEST(ModelLoad, MissingTensorNamesIt) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/deepseek-v3-tiny");
  ModelCopy m(src, "missing", [](auto& ts, auto&) {
    std::erase_if(ts, [](const NamedTensor& t) { return t.name == "model.layers.1.mlp.experts.7.up_proj.weight"; });
  });
  const std::string e = load_error(m.dir);
  EXPECT_NE(e.find("missing tensor 'model.layers.1.mlp.experts.7.up_proj.weight'"), std::string::npos) << e;
}

TEST(ModelLoad, ExtraTensorNamesItAndFile) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/llama-tiny");
  static float junk[4] = {1, 2, 3, 4};
  ModelCopy m(src, "extra", [](auto& ts, auto&) {
    ts.push_back({"model.layers.0.self_attn.extra_proj.weight", TensorView(junk, DType::F32, {2, 2})});
  });
  const std::string e = load_error(m.dir);
  EXPECT_NE(e.find("unexpected tensor 'model.layers.0.self_attn.extra_proj.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
}

TEST(ModelLoad, WrongShapeAndDtype) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/llama-tiny");
  ModelCopy m(src, "shape", [](auto& ts, auto&) {
    for (auto& t : ts)
      if (t.name == "model.layers.1.self_attn.q_proj.weight") t.view = t.view.rows(0, t.view.shape[0] - 1);
  });
  std::string e = load_error(m.dir);
  EXPECT_NE(e.find("tensor 'model.layers.1.self_attn.q_proj.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("has shape [63, 64], expected [64, 64]"), std::string::npos) << e;
  ModelCopy m2(src, "dtype", [](auto& ts, auto&) {
    for (auto& t : ts)
      if (t.name == "model.norm.weight") {  // 64 bf16 values reinterpreted as 32 int32
        t.view.dtype = DType::I32;
        t.view.shape[0] = 32;
      }
  });
  e = load_error(m2.dir);
  EXPECT_NE(e.find("tensor 'model.norm.weight'"), std::string::npos) << e;
}

TEST(ModelLoad, TruncatedCheckpoint) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/llama-tiny");
  ModelCopy m(src, "trunc");
  std::string bytes = read_file(m.dir / "model.safetensors");
  write_file(m.dir / "model.safetensors", bytes.substr(0, bytes.size() - 1000));
  const std::string e = load_error(m.dir);
  EXPECT_NE(e.find("out of range"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  write_file(m.dir / "model.safetensors", bytes.substr(0, 100));
  EXPECT_NE(load_error(m.dir).find("runs past end of file"), std::string::npos);
}

TEST(ModelLoad, TokenIdOutOfRange) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/qwen2-tiny");
  auto model = Model::load(src);
  auto seq = model->new_sequence(8);
  std::vector<int32_t> ids = {3, 400};
  std::vector<float> out;
  std::string e = error_of([&] { model->forward(*seq, ids, out, true); });
  EXPECT_NE(e.find("token id 400 at position 1 is out of range [0, 400)"), std::string::npos) << e;
  EXPECT_EQ(seq->length(), 0);  // nothing was appended
  std::vector<int32_t> many(9, 5);
  e = error_of([&] { model->forward(*seq, many, out, true); });
  EXPECT_NE(e.find("exceeds the KV cache capacity"), std::string::npos) << e;
}

TEST(ModelLoad, ShardedCheckpointMatchesSingleFile) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/deepseek-v2-tiny");
  fs::path d = temp_dir("sharded");
  SafetensorsFile f(src / "model.safetensors");
  std::vector<NamedTensor> a, b;
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (const auto& t : f.tensors()) {
    const bool first = t.name < "model.layers.1";
    (first ? a : b).push_back({t.name, f.view(t)});
    index["weight_map"][t.name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(d / "model-00001-of-00002.safetensors", a);
  write_safetensors(d / "model-00002-of-00002.safetensors", b);
  write_file(d / "model.safetensors.index.json", index.dump());
  fs::copy_file(src / "config.json", d / "config.json");
  auto m1 = Model::load(src), m2 = Model::load(d);
  std::vector<int32_t> ids = {5, 9, 200, 17};
  std::vector<float> o1, o2;
  auto s1 = m1->new_sequence(4), s2 = m2->new_sequence(4);
  m1->forward(*s1, ids, o1, true);
  m2->forward(*s2, ids, o2, true);
  EXPECT_EQ(o1, o2);
  // An index naming a shard that lacks the tensor is an error naming both.
  ASSERT_EQ(index["weight_map"]["model.embed_tokens.weight"], "model-00001-of-00002.safetensors");
  index["weight_map"]["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors";
  write_file(d / "model.safetensors.index.json", index.dump());
  const std::string e = load_error(d);
  EXPECT_NE(e.find("'model.embed_tokens.weight' in shard 'model-00002-of-00002.safetensors'"), std::string::npos) << e;
  fs::remove_all(d);
}

TEST(ModelLoad, Fp8WithoutScaleIsAnError) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/deepseek-v3-tiny-fp8");
  ModelCopy m(src, "fp8", [](auto& ts, auto&) {
    std::erase_if(ts, [](const NamedTensor& t) { return t.name == "model.layers.0.self_attn.o_proj.weight_scale_inv"; });
  });
  const std::string e = load_error(m.dir);
  EXPECT_NE(e.find("missing tensor 'model.layers.0.self_attn.o_proj.weight_scale_inv'"), std::string::npos) << e;
}

TEST(ModelLoad, V3InfoReportsLatentKvAndIgnoredMtp) {
  DSFUSE_REQUIRE_FIXTURE(src, "models/deepseek-v3-tiny");
  auto m = Model::load(src);
  const ModelInfo i = m->info();
  // (kv_lora_rank 64 + qk_rope_head_dim 16) x 3 layers x 4 bytes.
  EXPECT_EQ(i.kv_bytes_per_token, (64 + 16) * 3 * 4);
  EXPECT_FALSE(i.ignored_tensors.empty());
  for (const auto& n : i.ignored_tensors) EXPECT_EQ(n.rfind("model.layers.3.", 0), 0u) << n;
  auto r = test::run_dsfuse("info --json --model " + src.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["kv_bytes_per_token"], 960);
  EXPECT_EQ(j["family"], "deepseek_v3");
}

}  // namespace
