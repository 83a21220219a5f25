// Runs the CUDA fit kernel (csrc/fit_cuda_kernel.cuh) on the CPU: one std::thread per CUDA thread, barriers for
// __syncthreads / __syncwarp / cluster.sync, a per-warp exchange buffer for shuffles, and one shared-memory
// buffer per block that peers map into (distributed shared memory). Slow (hundreds of OS threads), so only for
// small problems; what it checks is the kernel's indexing, reductions and step logic on machines without a GPU.
// Built and called by tests/test_cuda_emulated.py (g++ -std=c++20 -pthread, loaded with ctypes).
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define IMPULSE_FIT_EMULATE 1
#define __host__
#define __device__

struct float4 {
  float x, y, z, w;
};
struct EmuIndex {
  unsigned x = 0, y = 0, z = 0;
};

namespace emu {
struct Block {
  explicit Block(std::size_t floats) : sync(256), smem(floats + 4, 0.f) {
    for (auto& w : warp) w = std::make_unique<std::barrier<>>(32);
  }
  std::barrier<> sync;
  std::unique_ptr<std::barrier<>> warp[8];
  float shuffle[8][32] = {};
  std::vector<float> smem;
  alignas(16) unsigned char static_mem[256] = {};
};
struct Cluster {
  explicit Cluster(int blocks) : sync(blocks * 256) {}
  std::barrier<> sync;
  std::vector<Block*> blocks;
};
thread_local Block* block = nullptr;
thread_local Cluster* cluster = nullptr;
thread_local int rank = 0;
}  // namespace emu

thread_local EmuIndex threadIdx, blockIdx, blockDim;
using std::min;

inline void __syncthreads() { emu::block->sync.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::block->warp[threadIdx.x / 32]->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
  emu::block->shuffle[w][lane] = v;
  __syncwarp();
  const float out = emu::block->shuffle[w][lane ^ static_cast<unsigned>(lane_mask)];
  __syncwarp();
  return out;
}

inline void cluster_sync(int cl) {
  if (cl > 1)
    emu::cluster->sync.arrive_and_wait();
  else
    __syncthreads();
}
inline const float* peer(const float* local, int rank, int cl) {
  if (cl == 1) return local;
  const std::ptrdiff_t offset = local - emu::block->smem.data();
  return emu::cluster->blocks[rank]->smem.data() + offset;
}
inline int cluster_rank(int cl) { return cl > 1 ? emu::rank : 0; }

#define FK_KERNEL void
#define FK_DEVICE inline
#define FK_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(emu::block->smem.data())
#define FK_STATIC_SHARED(type, name) type& name = *reinterpret_cast<type*>(emu::block->static_mem)

#include "fit_cuda_kernel.cuh"

using impulse_fit::cuda::FitArgs;

extern "C" int emu_fit(int layers, int heads, int loss_heads, int n, int d, int r, int k, const float* a,
                       const float* at, const float* b, const float* targets, const float* norm0, float* q,
                       float* kk, float* mq, float* vq, float* mk, float* vk, float* loss, float* grad_q,
                       float* grad_k, float scale, long long step0, long long steps, int renorm_every,
                       int renorm_mode, double lr, int cl, int state_in_smem) {
  using namespace impulse_fit::cuda;
  Params prm;
  FitArgs& fa = prm.args;
  fa.layers = layers; fa.heads = heads; fa.loss_heads = loss_heads;
  fa.n = n; fa.d = d; fa.r = r; fa.k = k;
  fa.a = a; fa.at = at; fa.b = b; fa.targets = targets; fa.norm0 = norm0;
  fa.q = q; fa.kk = kk; fa.mq = mq; fa.vq = vq; fa.mk = mk; fa.vk = vk; fa.loss = loss;
  fa.grad_q = grad_q; fa.grad_k = grad_k;
  fa.scale = scale; fa.step0 = step0; fa.steps = steps; fa.renorm_every = renorm_every;
  fa.renorm_mode = renorm_mode;
  fa.adam = impulse_fit::AdamHyper{lr, 0.9, 0.999, 1e-8};
  prm.cl = cl;
  prm.state_in_smem = state_in_smem != 0;
  prm.lay = make_layout(n, d, r, k, cl, prm.state_in_smem);
  for (int head = 0; head < layers * heads; ++head) {  // one cluster at a time
    emu::Cluster cluster(cl);
    std::vector<std::unique_ptr<emu::Block>> blocks;
    for (int i = 0; i < cl; ++i) {
      blocks.push_back(std::make_unique<emu::Block>(static_cast<std::size_t>(prm.lay.total)));
      cluster.blocks.push_back(blocks.back().get());
    }
    std::vector<std::thread> threads;
    threads.reserve(static_cast<std::size_t>(cl) * 256);
    for (int rk = 0; rk < cl; ++rk)
      for (unsigned t = 0; t < 256; ++t)
        threads.emplace_back([&, rk, t, head] {
          threadIdx.x = t;
          blockIdx.x = static_cast<unsigned>(rk);
          blockIdx.y = static_cast<unsigned>(head);
          blockDim.x = 256;
          emu::block = blocks[rk].get();
          emu::cluster = &cluster;
          emu::rank = rk;
          fit_kernel(prm);
        });
    for (auto& th : threads) th.join();
  }
  return prm.lay.total;
}
