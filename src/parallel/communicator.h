// Collective communication between tensor-parallel ranks. The in-process group (one thread per rank, CPU
// memory) is what the CPU backend and the single-process sharding tests use; an NCCL communicator for
// CUDA ranks implements the same interface.
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace dsfuse {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // x += every other rank's x (same shape on all ranks); f32, rows may be strided.  // x [R, C]
  virtual void all_reduce_sum(TensorView x) = 0;
  // out[:, r*C:(r+1)*C] = local of rank r.  // local [R, C] -> out [R, C*size]
  virtual void all_gather_cols(TensorView out, const TensorView& local) = 0;
  // Whether the collectives are queued on the backend's stream and may be recorded in its CUDA graphs (NCCL:
  // yes; the in-process group runs on the host: no).
  virtual bool graph_capturable() const { return false; }
};

// `size` communicators sharing one in-process group; rank i must be used by exactly one thread, and
// every rank must make the same sequence of calls. Sums are taken in rank order on every rank, so all
// ranks hold bit-identical results.
std::vector<std::unique_ptr<Communicator>> make_inprocess_group(int size);

}  // namespace dsfuse
