// Host interface of the CUDA fit (fit_cuda.cu). No CUDA or torch headers, so ops.cpp includes it from a plain
// C++ translation unit and fit_cuda.cu compiles without torch.
#pragma once

#include <string>

#include "fit_math.h"
#include "fit_plan.h"

namespace impulse_fit {
namespace cuda {

// All pointers are device pointers to contiguous float32 arrays. q, kk and the four moments are updated in
// place; loss receives each head's mean over N² of (p − t)² at the last forward pass.
struct FitArgs {
  int layers = 0, heads = 0;        // heads per layer
  int loss_heads = 0;               // the layer mean's divisor (usually `heads`)
  int n = 0, d = 0, r = 0;          // tokens, width, rank (head dim)
  int basis = 0;                    // size of the factored basis X = A·B
  const float* a = nullptr;         // (n, basis)  X = A·B
  const float* at = nullptr;        // (basis, n)  Aᵀ
  const float* b = nullptr;         // (basis, d)
  const float* targets = nullptr;   // (layers, heads, n, n)
  const float* norm0 = nullptr;     // (layers)
  float* q = nullptr;               // (layers, heads, d, r)
  float* kk = nullptr;
  float* mq = nullptr;
  float* vq = nullptr;
  float* mk = nullptr;
  float* vk = nullptr;
  float* loss = nullptr;            // (layers, heads)
  float* grad_q = nullptr;          // gradient mode (both set): write d loss / d Q, K; no renorm, no update
  float* grad_k = nullptr;
  float scale = 0.f;
  long long step0 = 0, steps = 0;
  int renorm_every = 0, renorm_mode = kRenormNone;
  AdamHyper adam{};
};

// Reads what the planner needs about the current device and the loaded kernel (compute capability, opt-in
// shared memory per block, the kernel's static shared bytes and code version, grid and cluster limits) into *out.
// Returns "" on success, otherwise why not (e.g. no kernel code for this GPU in the build).
std::string device_limits(plan::DeviceLimits* out);

// Plans the launch for the current device (fit_plan.h) and launches one persistent kernel for all steps on
// `stream` (a cudaStream_t): the first feasible shape, or shape number `shape` when shape >= 0 (then an error if
// it cannot run here). Returns "" on success, otherwise why nothing was launched.
std::string launch_fit(const FitArgs& args, void* stream, int shape = kPlanBest);

// The shape number of the last successful launch in this process (-1 before any): lets the GPU tests check that
// a forced shape is the one that ran.
int last_launch_shape();

}  // namespace cuda
}  // namespace impulse_fit
