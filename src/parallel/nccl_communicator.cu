// NCCL communicators for CUDA tensor-parallel ranks in one process (see nccl_communicator.h).
// Ordering: every collective and every pack/unpack copy is queued on the rank's backend stream, so it runs
// after the kernels that produced its input and before the ones that consume its output; nothing here
// synchronizes the host except when a scratch buffer grows.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "backend/cuda/common.cuh"
#include "core/error.h"
#include "parallel/nccl_communicator.h"

namespace dsfuse {
namespace {

void nccl_ok(ncclResult_t r, ncclComm_t comm, const char* what) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  const char* last = ncclGetLastError(comm);
  fail(cat("NCCL error in ", what, ": ", ncclGetErrorString(r), last && *last ? cat(" (", last, ")") : std::string()));
}

// The NCCL communicators of one group, destroyed together when the last rank's Communicator goes.
struct Clique {
  std::vector<ncclComm_t> comms;
  std::vector<int> devs;
  ~Clique() {
    // ncclCommDestroy may wait for the other ranks (communicator finalization is collective), so each
    // rank's communicator is destroyed on its own thread, once its GPU has finished its queued work.
    std::vector<std::thread> ts;
    for (size_t i = 0; i < comms.size(); ++i)
      ts.emplace_back([this, i] {
        cudaSetDevice(devs[i]);
        cudaDeviceSynchronize();
        ncclCommDestroy(comms[i]);
      });
    for (auto& t : ts) t.join();
  }
};

// A device buffer that only grows (cudaMalloc only when a call needs more than it holds). A replaced buffer is
// kept until the communicator goes: decode steps recorded as CUDA graphs still point at it (each graph uses
// one buffer for its gather and copy-out, and graphs of one stream never overlap, so sharing it is safe).
struct Scratch {
  float* p = nullptr;
  size_t n = 0;  // floats
  std::vector<float*> retired;
  float* get(size_t want, cudaStream_t /*s*/) {
    if (want <= n) return p;
    if (p) retired.push_back(p);
    const size_t grown = std::max({want, 2 * n, static_cast<size_t>(1) << 16});
    CUDA_CHECK(cudaMalloc(&p, grown * sizeof(float)));
    n = grown;
    return p;
  }
  void release() {
    cudaFree(p);
    for (float* r : retired) cudaFree(r);
    p = nullptr;
    retired.clear();
  }
};

class NcclComm final : public Communicator {
 public:
  NcclComm(std::shared_ptr<Clique> c, int rank, cudaStream_t stream)
      : c_(std::move(c)), rank_(rank), dev_(c_->devs[rank]), comm_(c_->comms[rank]), stream_(stream) {}
  ~NcclComm() override {
    // No stream use here: the backend (and its stream) may be gone already. cudaFree waits for the device.
    if (!pack_.p && !gather_.p) return;
    cudaSetDevice(dev_);
    pack_.release();
    gather_.release();
  }
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(c_->comms.size()); }
  // Collectives go on the rank's backend stream and need no host work once the pack/gather buffers have
  // grown (the first, unrecorded run of a decode step grows them), so decode steps are recorded as graphs.
  bool graph_capturable() const override { return true; }

  void all_reduce_sum(TensorView x) override {
    DSFUSE_CHECK(x.dtype == DType::F32 && x.ndim >= 1, "all_reduce_sum: expected an f32 tensor, got ", x.shape_str());
    if (x.numel() == 0) return;
    const int64_t R = x.shape[0], C = x.numel() / R;
    check_rows_packed(x, "all_reduce_sum");
    CUDA_CHECK(cudaSetDevice(dev_));
    if (R == 1 || x.stride[0] == C) {
      nccl_ok(ncclAllReduce(x.data, x.data, static_cast<size_t>(R * C), ncclFloat, ncclSum, comm_, stream_), comm_,
              "ncclAllReduce");
      return;
    }
    // Strided rows: pack into contiguous scratch, reduce in place, unpack.
    float* buf = pack_.get(static_cast<size_t>(R * C), stream_);
    const size_t row = static_cast<size_t>(C) * sizeof(float), pitch = static_cast<size_t>(x.stride[0]) * sizeof(float);
    CUDA_CHECK(cudaMemcpy2DAsync(buf, row, x.data, pitch, row, R, cudaMemcpyDeviceToDevice, stream_));
    nccl_ok(ncclAllReduce(buf, buf, static_cast<size_t>(R * C), ncclFloat, ncclSum, comm_, stream_), comm_,
            "ncclAllReduce");
    CUDA_CHECK(cudaMemcpy2DAsync(x.data, pitch, buf, row, row, R, cudaMemcpyDeviceToDevice, stream_));
  }

  void all_gather_cols(TensorView out, const TensorView& local) override {
    DSFUSE_CHECK(local.dtype == DType::F32 && out.dtype == DType::F32 && local.ndim == 2 && out.ndim == 2,
                 "all_gather_cols: expected f32 matrices, got ", local.shape_str(), " -> ", out.shape_str());
    const int64_t R = local.shape[0], C = local.shape[1], n = size();
    DSFUSE_CHECK(out.shape[0] == R && out.shape[1] == C * n && local.stride[1] == 1 && out.stride[1] == 1,
                 "all_gather_cols: ", local.shape_str(), " per rank does not gather into ", out.shape_str());
    if (R == 0 || C == 0) return;
    CUDA_CHECK(cudaSetDevice(dev_));
    const size_t row = static_cast<size_t>(C) * sizeof(float);
    const size_t count = static_cast<size_t>(R * C);
    const float* send = local.ptr<float>();
    if (R > 1 && local.stride[0] != C) {
      float* buf = pack_.get(count, stream_);
      CUDA_CHECK(cudaMemcpy2DAsync(buf, row, local.data, static_cast<size_t>(local.stride[0]) * sizeof(float), row,
                                       R, cudaMemcpyDeviceToDevice, stream_));
      send = buf;
    }
    if (R == 1) {
      // One row: the gathered [size, 1, C] blocks are exactly out's row.
      nccl_ok(ncclAllGather(send, out.data, count, ncclFloat, comm_, stream_), comm_, "ncclAllGather");
      return;
    }
    float* all = gather_.get(count * static_cast<size_t>(n), stream_);  // [size, R, C]
    nccl_ok(ncclAllGather(send, all, count, ncclFloat, comm_, stream_), comm_, "ncclAllGather");
    const size_t pitch = static_cast<size_t>(out.stride[0]) * sizeof(float);
    for (int64_t k = 0; k < n; ++k)
      CUDA_CHECK(cudaMemcpy2DAsync(out.ptr<float>() + k * C, pitch, all + k * count, row, row, R,
                                       cudaMemcpyDeviceToDevice, stream_));
  }

 private:
  // Rows may be strided, but each row's elements must be packed.
  static void check_rows_packed(const TensorView& x, const char* what) {
    int64_t expect = 1;
    for (int i = x.ndim - 1; i >= 1; --i) {
      DSFUSE_CHECK(x.shape[i] == 1 || x.stride[i] == expect, what, ": rows of ", x.shape_str(), " are not packed");
      expect *= x.shape[i];
    }
  }

  std::shared_ptr<Clique> c_;
  int rank_, dev_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  Scratch pack_, gather_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<Backend*>& backends) {
  const int n = static_cast<int>(backends.size());
  DSFUSE_CHECK(n >= 1, "make_nccl_group: no backends");
  auto clique = std::make_shared<Clique>();
  std::vector<cudaStream_t> streams;
  for (int r = 0; r < n; ++r) {
    const Device d = backends[static_cast<size_t>(r)]->device();
    DSFUSE_CHECK(d.kind == DeviceKind::CUDA && backends[static_cast<size_t>(r)]->native_stream(), "rank ", r,
                 ": NCCL needs a CUDA backend, got ", backends[static_cast<size_t>(r)]->name());
    for (int q = 0; q < r; ++q)
      DSFUSE_CHECK(clique->devs[static_cast<size_t>(q)] != d.index, "ranks ", q, " and ", r, " are both on CUDA device ",
                   d.index, " (NCCL needs one GPU per rank)");
    clique->devs.push_back(d.index);
    streams.push_back(static_cast<cudaStream_t>(backends[static_cast<size_t>(r)]->native_stream()));
  }
  // NVLink multicast (NVLS) stays off, whatever the environment says: on shared machines it can take the
  // host's GPUs out of service. NCCL reads the variable when the first communicator is made.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  int prev = 0;
  CUDA_CHECK(cudaGetDevice(&prev));
  clique->comms.assign(static_cast<size_t>(n), nullptr);
  const ncclResult_t r = ncclCommInitAll(clique->comms.data(), n, clique->devs.data());
  cudaSetDevice(prev);
  if (r != ncclSuccess) {
    clique->comms.clear();  // nothing to destroy
    nccl_ok(r, nullptr, cat("ncclCommInitAll over ", n, " GPUs").c_str());
  }
  std::vector<std::unique_ptr<Communicator>> out;
  for (int i = 0; i < n; ++i) out.push_back(std::make_unique<NcclComm>(clique, i, streams[static_cast<size_t>(i)]));
  return out;
}

}  // namespace dsfuse
