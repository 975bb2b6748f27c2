// The backend interface: device memory, streams and op dispatch. Model code is written only against
// this interface (and TensorView); the CPU backend implements it now, a CUDA backend later, so model
// files never include device headers. Activations are f32 row-major [T, ...] unless stated; weights are
// `Linear`s in their stored format (bf16/f16/f32, or FP8 blocks dequantized when used).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "ops/sample_rows.h"

namespace dsfuse {

// A weight matrix y = x W^T (+ b) in its stored format.
struct Linear {
  TensorView w;      // [N, K]: f32 / bf16 / f16 / f8e4m3 / i8
  TensorView scale;  // f8e4m3: f32 [ceil(N/block_rows), ceil(K/block_cols)] (weight_scale_inv);
                     // i8: f32 [N] per output channel, or [N, G] per group of K/G columns
  TensorView zero;   // i8 asymmetric only: zero points shaped like scale, W = (q - zero) * scale
  TensorView bias;   // optional [N] (f32 / bf16 / f16)
  int block_rows = 128, block_cols = 128;

  int64_t out_features() const { return w.shape[0]; }
  int64_t in_features() const { return w.shape[1]; }
  bool empty() const { return w.empty(); }
  size_t bytes() const {
    return w.nbytes() + (scale.empty() ? 0 : scale.nbytes()) + (zero.empty() ? 0 : zero.nbytes()) +
           (bias.empty() ? 0 : bias.nbytes());
  }
};

// Dequantizes rows [r0, r1) of a weight into f32 `out` ([r1-r0, K], row stride K). FP8 values are
// multiplied by their block scale and rounded to bf16, the checkpoint's own dequantized form.
void dequantize_rows(const Linear& w, int64_t r0, int64_t r1, float* out);
// Reads element i of a 1-D f32/bf16/f16 vector (norm weights, biases).
float vec_at(const TensorView& v, int64_t i);

// Rotary embedding tables: the inverse frequency of each rotated pair and the cos/sin scale
// (YaRN's attention factor; 1 otherwise).
struct RopeTable {
  std::vector<float> inv_freq;  // [rot_dim / 2]
  float cos_sin_scale = 1.0f;
  int rot_dim() const { return static_cast<int>(inv_freq.size()) * 2; }
};

enum class RopeStyle {
  Neox,        // pairs (i, i + d/2): Llama, Qwen2 (HF rotate_half)
  Interleaved  // pairs (2i, 2i + 1): DeepSeek MLA rope part
};

// MoE routing parameters (DeepSeek V2/V3 gates).
struct RouterParams {
  int n_experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  enum class Method { Greedy, GroupLimitedGreedy, NoauxTc } method = Method::Greedy;
  bool sigmoid = false;  // scoring function: sigmoid (V3) or softmax (V2)
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
};

// Where a sequence's cached rows live in a KV pool: logical row s is physical row
// table[s / block_size] * block_size + s % block_size (paged cache); without a table, row s is s.
struct PagedRows {
  const int32_t* table = nullptr;
  int block_size = 0;
  int64_t phys(int64_t s) const {
    return table ? static_cast<int64_t>(table[s / block_size]) * block_size + s % block_size : s;
  }
};

// One sequence's slice of a batch: tokens [t0, t0 + n) of the batch sit at positions past..past+n-1 of
// that sequence, whose cached rows are mapped by `rows` (a block table, or contiguous).
struct SeqSegment {
  int64_t t0 = 0, n = 0, past = 0;
  PagedRows rows;
};

// One routed expert: SwiGLU MLP.
struct ExpertWeights {
  Linear gate, up, down;  // gate/up [I, H], down [H, I]
};

// Tensor arguments of ops live in the backend's memory (activations come from an Arena backed by
// Backend::alloc, weights from prepare()); plain pointer arguments (token ids, positions, block tables in
// PagedRows) are host memory, and a device backend copies what it needs.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;

  // Memory and transfers (on the CPU these are plain host memory and memcpy).
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  virtual void copy_to_device(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void synchronize() {}
  // The device stream ops are queued on (a cudaStream_t for CUDA; null on the CPU, whose ops finish before
  // they return), for communicators that queue their collectives after the ops that produce the data.
  virtual void* native_stream() { return nullptr; }
  // Called by a worker thread before it uses this backend (CUDA: makes the backend's GPU current for the
  // thread, since kernels are launched on the calling thread's current device).
  virtual void bind_thread() {}
  // Weight residency: the loader passes every weight through these once. The CPU backend uses the
  // memory-mapped bytes as they are; a device backend returns copies in its own memory.
  virtual Linear prepare(const Linear& w) { return w; }
  virtual TensorView prepare(const TensorView& v) { return v; }

  // out[t] = table[ids[t]]  // out [T, H] f32, table [V, H]
  virtual void embedding(TensorView out, const TensorView& table, const int32_t* ids, int64_t T) = 0;
  // y = x W^T + b  // y [T, N], x [T, K]
  virtual void linear(TensorView y, const TensorView& x, const Linear& w) = 0;
  // y = x / rms(x) * w, row-wise over the last dim; y may alias x  // [T, D]
  virtual void rms_norm(TensorView y, const TensorView& x, const TensorView& w, float eps) = 0;
  // y += x  // [T, D]
  virtual void add(TensorView y, const TensorView& x) = 0;
  // x += o, then h = rms_norm(x) * w (the residual add and the next block's norm, fused on devices)
  // x, o, h [T, D]; the default calls add and rms_norm.
  virtual void add_rms_norm(TensorView x, const TensorView& o, TensorView h, const TensorView& w, float eps) {
    add(x, o);
    rms_norm(h, x, w, eps);
  }
  // A decode step's norm and residual folded into the projections around them (llama-family layers call these
  // when fuses_norm_linear(T, a layer's qkv weight) is true and there is no tensor parallelism; the defaults
  // compose the ops through the caller's scratch, so a backend only overrides what it fuses):
  //   rms_norm_linear       y = rms_norm(x, nw) W^T + b                          y [T, N], x [T, K], h [T, K]
  //   rms_norm_linear_silu  y = SwiGLU over gate_up of rms_norm(x, nw)           y [T, I], x [T, K], h [T, K]
  //   linear_add            x += a W^T + b (the residual add into the output)    x [T, N], a [T, K], tmp [T, N]
  virtual bool fuses_norm_linear(int64_t /*T*/, const Linear& /*w*/) const { return false; }
  virtual void rms_norm_linear(TensorView y, const TensorView& x, const TensorView& nw, float eps, const Linear& w,
                               TensorView h) {
    rms_norm(h, x, nw, eps);
    linear(y, h, w);
  }
  virtual void rms_norm_linear_silu(TensorView y, const TensorView& x, const TensorView& nw, float eps,
                                    const Linear& gate_up, TensorView h) {
    rms_norm(h, x, nw, eps);
    linear_silu(y, h, gate_up);
  }
  virtual void linear_add(TensorView x, const TensorView& a, const Linear& w, TensorView tmp) {
    linear(tmp, a, w);
    add(x, tmp);
  }
  // y = silu(x Wg^T + bg) * (x Wu^T + bu) for gate_up = [Wg; Wu] ([2I, K], bias [2I] optional)  // y [T, I], x [T, K]
  // The default runs linear() into a temporary and silu_mul().
  virtual void linear_silu(TensorView y, const TensorView& x, const Linear& gate_up);
  // y = silu(gate) * up  // [T, I]; y may alias gate
  virtual void silu_mul(TensorView y, const TensorView& gate, const TensorView& up) = 0;
  // Rotates dims [offset, offset + rot_dim) of every head in place  // x [T, H, D] (row stride may exceed H*D)
  virtual void rope(TensorView x, int offset, const RopeTable& table, RopeStyle style, const int32_t* positions) = 0;
  // Copies rows into a (paged) cache: dst[rows.phys(dst_row0 + t)] = src[t]  // src [T, D] strided, dst [S, D]
  virtual void copy_rows(TensorView dst, int64_t dst_row0, const TensorView& src, const PagedRows& rows = {}) = 0;
  // Causal GQA attention of T new queries at positions past..past+T-1 over keys/values 0..past+T-1,
  // read from (paged) cache rows.  // out [T, Hq, Dv], q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv]
  virtual void attention(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v,
                         int64_t past, float scale, const PagedRows& rows = {}) = 0;
  // MLA in absorbed form over the latent cache: per head h,
  //   q_lat = W_UK[h]^T q_nope[h]; s = scale (q_lat·latent[s] + q_pe[h]·k_pe[s]); o_lat = softmax(s)·latent;
  //   out[h] = W_UV[h] o_lat, with W_UK/W_UV the key/value rows of kv_b ([H*(nope+v), C]).
  // out [T, H, Dv], q_nope [T, H, nope], q_pe [T, H, R], latent [S, C], k_pe [S, R]
  virtual void mla_attention(TensorView out, const TensorView& q_nope, const TensorView& q_pe,
                             const TensorView& latent, const TensorView& k_pe, const Linear& kv_b, int64_t past,
                             float scale, const PagedRows& rows = {}) = 0;
  // Expert choice from router logits: ids/weights [T, top_k]  // logits [T, E] f32, bias [E] or empty
  virtual void moe_route(TensorView ids, TensorView weights, const TensorView& logits, const TensorView& bias,
                         const RouterParams& p) = 0;
  // out = sum_k weights[t,k] * expert[ids[t,k]](x[t])  // out, x [T, H]; tokens are gathered per expert.
  // Experts with empty weights are skipped (owned by another expert-parallel rank).
  virtual void moe_experts(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& weights,
                           const std::vector<ExpertWeights>& experts) = 0;

  // ids[r] = argmax_j x[r, j] (lowest j on ties)  // ids [R] i32, x [R, V] f32
  virtual void argmax_rows(TensorView ids, const TensorView& x);
  // ids[r] = the token chosen from row r of x with params[r] (host array of R), as ops/sample_rows.h defines
  // (temperature, top-k, top-p, min-p and the row's uniform draw).  // ids [R] i32, x [R, V] f32
  // The default runs the reference on host memory; a device backend chooses on the device (only ids move).
  virtual void sample_rows(TensorView ids, const TensorView& x, const SampleRowParams* params);
  // Whether sample_rows runs on the device (the engine then sends eligible sampled steps there).
  virtual bool device_sampling() const { return false; }

  // Batched forms over every segment of a batch (one launch on a device backend); the defaults loop over
  // the segments with the single-sequence ops above.
  // dst[seg.rows.phys(seg.past + i)] = src[seg.t0 + i]  // src [T, D] strided, dst [S, D]
  virtual void copy_rows_segs(TensorView dst, const TensorView& src, const std::vector<SeqSegment>& segs);
  // Neox rope on the q and k heads of qk (k heads follow the Hq q heads), then the rotated k heads and v
  // written to the cache pools kc / vc at the step's rows (copy_rows_segs): one launch on a device backend.
  // qk [T, Hq + Hkv, D] (heads contiguous), v [T, Hkv, D], kc / vc [S, Hkv * D]
  virtual void rope_store_kv(TensorView qk, int64_t Hq, const RopeTable& table, const int32_t* positions,
                             TensorView kc, TensorView vc, const TensorView& v, const std::vector<SeqSegment>& segs);
  // MLA's new cache rows: interleaved rope on the rope-key part of kv_a (in place), latent = rms_norm(kv_a's
  // first C columns) * norm_w into `latent` (scratch [T, C]), then latent and the rotated rope key written to the
  // pools' rows of the step: one launch on a device backend.  // kv_a [T, C + R], pools [S, C], [S, R]
  virtual void mla_store_kv(TensorView kv_a, int64_t C, const TensorView& norm_w, float eps, const RopeTable& table,
                            const int32_t* positions, TensorView latent, TensorView lat_c, TensorView kpe_c,
                            const std::vector<SeqSegment>& segs);
  // attention() per segment  // out [T, Hq, Dv], q [T, Hq, D], k/v pools [S, Hkv, D|Dv]
  virtual void attention_segs(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v,
                              float scale, const std::vector<SeqSegment>& segs);
  // mla_attention() per segment
  virtual void mla_attention_segs(TensorView out, const TensorView& q_nope, const TensorView& q_pe,
                                  const TensorView& latent, const TensorView& k_pe, const Linear& kv_b, float scale,
                                  const std::vector<SeqSegment>& segs);

  // Step inputs: the host arrays every layer of one forward reads (token ids [T], positions [T], the
  // segments and their block tables). A device backend uploads them once here; ops later given the same
  // pointers use that copy. Valid until the next begin_step.
  virtual void begin_step(const int32_t* /*ids*/, const int32_t* /*positions*/, int64_t /*T*/,
                          const std::vector<SeqSegment>* /*segs*/) {}

  // Step graphs (CUDA graphs): a forward whose launches depend only on `key` (same shapes, same buffers; the
  // step inputs are read from device memory) can be recorded once and replayed. graph_launch replays the
  // graph recorded for `key` and returns true, or returns false (nothing recorded yet). graph_begin starts
  // recording the ops that follow when `key` has been seen before (the first forward of a shape runs plainly,
  // warming every cache), graph_end stops recording and runs what was recorded. The defaults do nothing.
  virtual bool graph_launch(uint64_t /*key*/) { return false; }
  virtual void graph_begin(uint64_t /*key*/) {}
  virtual void graph_end() {}

  // GB/s of a large streaming read of this device's memory (0: not measured by the backend; `dsfuse bench`
  // then probes host memory).
  virtual double measure_bandwidth_gbs() { return 0; }
};

std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

}  // namespace dsfuse
