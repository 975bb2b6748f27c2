// Communicators between CUDA tensor-parallel ranks of one process, over NCCL (declared without CUDA/NCCL
// headers; defined only in CUDA builds that found NCCL, where DSFUSE_HAVE_NCCL is defined).
#pragma once
#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace dsfuse {

// One communicator per rank over the CUDA backends' GPUs (backends[r]->device().index; distinct GPUs), made
// with ncclCommInitAll. Rank r's collectives are queued on backends[r]->native_stream(), after the ops that
// produced their input and before the ops that read the result, so no host synchronisation is needed; each
// call makes rank r's GPU current on the calling thread. As with the in-process group, every rank must be
// driven by its own thread and all ranks must make the same sequence of calls. NVLink multicast (NVLS) is
// forced off (NCCL_NVLS_ENABLE=0) before the communicators are made. The backends must be alive whenever a
// collective is called; destroying the communicators waits for each GPU's queued work.
std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<Backend*>& backends);

}  // namespace dsfuse
