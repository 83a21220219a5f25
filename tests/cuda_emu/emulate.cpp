// Runs the CUDA fit kernel (csrc/fit_cuda_kernel.cuh) on the CPU: one std::thread per CUDA thread, barriers for
// __syncthreads / __syncwarp / cluster.sync, a per-warp exchange buffer for shuffles, and one shared-memory
// buffer per block that peers map into (distributed shared memory). Slow (hundreds of OS threads), so only for
// small problems; what it checks is the kernel's indexing, reductions and step logic on machines without a GPU.
// The launch is planned by the real planner (csrc/fit_plan.cpp, linked in) and each block gets exactly the planned
// dynamic shared memory, guarded on both sides. Built and called by tests/test_cuda_emulated.py
// (g++ -std=c++20 -pthread, with csrc/fit_plan.cpp, loaded with ctypes).
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
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
// Dynamic shared memory: exactly the planned floats, between two guard zones. Everything starts as NaN, so a
// read of shared memory the kernel never wrote (real shared memory starts with garbage) poisons the result;
// the guard zones hold a NaN with a distinct payload that only an out-of-bounds write can change.
constexpr std::size_t kGuard = 64;
constexpr std::uint32_t kGuardBits = 0x7fc0dead;
constexpr std::uint32_t kInitBits = 0x7fc00000;

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

struct Block {
  explicit Block(std::size_t floats) : sync(256), mem(floats + 2 * kGuard, bits_to_float(kInitBits)), used(floats) {
    for (auto& w : warp) w = std::make_unique<std::barrier<>>(32);
    for (std::size_t i = 0; i < kGuard; ++i) mem[i] = mem[kGuard + floats + i] = bits_to_float(kGuardBits);
    std::memset(static_mem, 0xff, sizeof static_mem);
  }
  float* smem() { return mem.data() + kGuard; }
  bool guards_intact() const {
    for (std::size_t i = 0; i < kGuard; ++i) {
      std::uint32_t lo, hi;
      std::memcpy(&lo, &mem[i], 4);
      std::memcpy(&hi, &mem[kGuard + used + i], 4);
      if (lo != kGuardBits || hi != kGuardBits) return false;
    }
    return true;
  }
  std::barrier<> sync;
  std::unique_ptr<std::barrier<>> warp[8];
  float shuffle[2][8][32] = {};  // two exchange buffers per warp, used by alternate shuffles
  std::vector<float> mem;
  std::size_t used;
  alignas(16) unsigned char static_mem[256];
};
struct Cluster {
  explicit Cluster(int blocks) : sync(blocks * 256) {}
  std::barrier<> sync;
  std::vector<Block*> blocks;
};
thread_local Block* block = nullptr;
thread_local Cluster* cluster = nullptr;
thread_local int rank = 0;
thread_local unsigned shuffles = 0;  // shuffles this thread has done: every lane of a warp does the same ones
}  // namespace emu

thread_local EmuIndex threadIdx, blockIdx, blockDim;
using std::min;

inline void __syncthreads() { emu::block->sync.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::block->warp[threadIdx.x / 32]->arrive_and_wait(); }
// One warp barrier per shuffle: shuffle i writes buffer i % 2 and reads it after the barrier; the next write to
// that buffer (shuffle i + 2) comes after the barrier of shuffle i + 1, which no lane passes before every lane
// has finished reading shuffle i.
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* buf = emu::block->shuffle[emu::shuffles++ & 1u][w];
  buf[lane] = v;
  __syncwarp();
  return buf[lane ^ static_cast<unsigned>(lane_mask)];
}

// A cluster barrier is a barrier of all the cluster's threads (and so also of each block's).
inline void cluster_sync(int cl) {
  if (cl > 1)
    emu::cluster->sync.arrive_and_wait();
  else
    __syncthreads();
}
inline const float* peer(const float* local, int rank, int cl) {
  if (cl == 1) return local;
  const std::ptrdiff_t offset = local - emu::block->smem();
  return emu::cluster->blocks[rank]->smem() + offset;
}
inline int cluster_rank(int cl) { return cl > 1 ? emu::rank : 0; }

#define FK_KERNEL void
#define FK_DEVICE inline
#define FK_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(emu::block->smem())
#define FK_STATIC_SHARED(type, name) type& name = *reinterpret_cast<type*>(emu::block->static_mem)

#include "fit_cuda_kernel.cuh"

namespace plan = impulse_fit::plan;

// One call's problem, state and launch request (mirrored by a ctypes.Structure in tests/test_cuda_emulated.py).
struct EmuCall {
  int layers, heads, loss_heads, n, d, r, basis;
  const float *a, *at, *b, *targets, *norm0;
  float *q, *kk, *mq, *vq, *mk, *vk, *loss, *grad_q, *grad_k;
  float scale;
  long long step0, steps;
  int renorm_every, renorm_mode;
  double lr;
  // launch: the planner's choice (shape = -1) or shape number `shape`, for a device with these limits
  int shape, max_tile_rows;
  long long smem_optin, static_smem;
  int cc_major, cc_minor, code_version;
  long long max_grid_y;
  int cluster_launch;
};

// Plans the launch as fit_cuda.cu does and runs it: every launch (grid.y chunk of heads), one cluster at a time.
// Returns the shape number that ran, or -1 with the planner's refusal in `err`, or -2 when the kernel wrote
// outside the planned shared memory. *dynamic_bytes and *tile_rows receive the plan's.
extern "C" int emu_fit(const EmuCall* c, char* err, int err_len, long long* dynamic_bytes, int* tile_rows) {
  using namespace impulse_fit::cuda;
  FitArgs fa;
  fa.layers = c->layers; fa.heads = c->heads; fa.loss_heads = c->loss_heads;
  fa.n = c->n; fa.d = c->d; fa.r = c->r; fa.basis = c->basis;
  fa.a = c->a; fa.at = c->at; fa.b = c->b; fa.targets = c->targets; fa.norm0 = c->norm0;
  fa.q = c->q; fa.kk = c->kk; fa.mq = c->mq; fa.vq = c->vq; fa.mk = c->mk; fa.vk = c->vk; fa.loss = c->loss;
  fa.grad_q = c->grad_q; fa.grad_k = c->grad_k;
  fa.scale = c->scale; fa.step0 = c->step0; fa.steps = c->steps; fa.renorm_every = c->renorm_every;
  fa.renorm_mode = c->renorm_mode;
  fa.adam.lr = c->lr;  // beta1, beta2, eps: the defaults of fit_constants.h

  plan::Problem pb;
  pb.layers = c->layers; pb.heads = c->heads; pb.n = c->n; pb.d = c->d; pb.r = c->r; pb.basis = c->basis;
  plan::DeviceLimits dev;
  dev.cc_major = c->cc_major; dev.cc_minor = c->cc_minor; dev.smem_optin = c->smem_optin;
  dev.static_smem = c->static_smem; dev.code_version = c->code_version; dev.max_grid_y = c->max_grid_y;
  dev.cluster_launch = c->cluster_launch != 0;
  plan::Plan pl;
  std::string why;
  if (c->shape >= 0) {
    why = plan::plan_shape(pb, dev, c->shape, &pl, c->max_tile_rows);
  } else {
    const plan::Planned planned = plan::plan_launch(pb, dev, c->max_tile_rows);
    if (planned.plans.empty())
      why = planned.reason;
    else
      pl = planned.plans.front();
  }
  if (!why.empty()) {
    std::snprintf(err, static_cast<std::size_t>(err_len), "%s", why.c_str());
    return -1;
  }
  *dynamic_bytes = pl.dynamic_bytes;
  *tile_rows = pl.tile_rows;
  if (pl.dynamic_bytes != 4LL * pl.layout.total || sizeof(impulse_fit::AdamStep<float>) > 256) {
    std::snprintf(err, static_cast<std::size_t>(err_len), "plan inconsistent with its layout");
    return -1;
  }
  const int cl = pl.shape.cluster;
  const long long total_heads = static_cast<long long>(c->layers) * c->heads;
  bool intact = true;
  for (long long head0 = 0; head0 < total_heads; head0 += pl.heads_per_launch) {  // one launch
    const Params prm = make_params(fa, pl, head0);
    const long long heads = std::min(pl.heads_per_launch, total_heads - head0);
    for (long long y = 0; y < heads; ++y) {  // one cluster at a time
      emu::Cluster cluster(cl);
      std::vector<std::unique_ptr<emu::Block>> blocks;
      for (int i = 0; i < cl; ++i) {
        blocks.push_back(std::make_unique<emu::Block>(static_cast<std::size_t>(pl.layout.total)));
        cluster.blocks.push_back(blocks.back().get());
      }
      std::vector<std::thread> threads;
      threads.reserve(static_cast<std::size_t>(cl) * 256);
      for (int rk = 0; rk < cl; ++rk)
        for (unsigned t = 0; t < 256; ++t)
          threads.emplace_back([&, rk, t, y] {
            threadIdx.x = t;
            blockIdx.x = static_cast<unsigned>(rk);
            blockIdx.y = static_cast<unsigned>(y);
            blockDim.x = 256;
            emu::block = blocks[rk].get();
            emu::cluster = &cluster;
            emu::rank = rk;
            emu::shuffles = 0;
            fit_kernel(prm);
          });
      for (auto& th : threads) th.join();
      for (const auto& blk : blocks) intact = intact && blk->guards_intact();
    }
  }
  if (!intact) {
    std::snprintf(err, static_cast<std::size_t>(err_len), "the kernel wrote outside its planned shared memory");
    return -2;
  }
  return pl.shape_id;
}
