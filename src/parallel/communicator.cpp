#include "parallel/communicator.h"

#include <barrier>
#include <cstring>

namespace dsfuse {
namespace {

struct Group {
  explicit Group(int n) : size(n), sync(n), slots(static_cast<size_t>(n)) {}
  int size;
  std::barrier<> sync;
  std::vector<TensorView> slots;
};

class InProcessComm final : public Communicator {
 public:
  InProcessComm(std::shared_ptr<Group> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_->size; }

  void all_reduce_sum(TensorView x) override {
    const int64_t R = x.shape[0], C = x.numel() / x.shape[0];
    g_->slots[rank_] = x;
    g_->sync.arrive_and_wait();  // every rank's input is published
    sum_.resize(static_cast<size_t>(R * C));
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        float s = 0;
        for (int k = 0; k < g_->size; ++k) s += g_->slots[k].ptr<float>()[r * g_->slots[k].stride[0] + c];
        sum_[r * C + c] = s;
      }
    g_->sync.arrive_and_wait();  // everyone has read every input
    for (int64_t r = 0; r < R; ++r) std::memcpy(x.ptr<float>() + r * x.stride[0], &sum_[r * C], C * sizeof(float));
  }

  void all_gather_cols(TensorView out, const TensorView& local) override {
    const int64_t R = local.shape[0], C = local.shape[1];
    g_->slots[rank_] = local;
    g_->sync.arrive_and_wait();
    for (int k = 0; k < g_->size; ++k)
      for (int64_t r = 0; r < R; ++r)
        std::memcpy(out.ptr<float>() + r * out.stride[0] + k * C, g_->slots[k].ptr<float>() + r * g_->slots[k].stride[0],
                    C * sizeof(float));
    g_->sync.arrive_and_wait();
  }

 private:
  std::shared_ptr<Group> g_;
  int rank_;
  std::vector<float> sum_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_inprocess_group(int size) {
  auto g = std::make_shared<Group>(size);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<InProcessComm>(g, r));
  return out;
}

}  // namespace dsfuse
