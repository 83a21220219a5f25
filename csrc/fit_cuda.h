// Host interface of the CUDA fit (fit_cuda.cu). No CUDA or torch headers, so ops.cpp includes it from a plain
// C++ translation unit and fit_cuda.cu compiles without torch.
#pragma once

#include <string>

#include "fit_math.h"

namespace impulse_fit {
namespace cuda {

// All pointers are device pointers to contiguous float32 arrays. q, kk and the four moments are updated in
// place; loss receives each head's mean over N² of (p − t)² at the last forward pass.
struct FitArgs {
  int layers = 0, heads = 0;        // heads per layer
  int loss_heads = 0;               // the layer mean's divisor (usually `heads`)
  int n = 0, d = 0, r = 0, k = 0;   // tokens, width, rank, basis size
  const float* a = nullptr;         // (n, k)    X = A·B
  const float* at = nullptr;        // (k, n)    Aᵀ
  const float* b = nullptr;         // (k, d)
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
  AdamHyper adam{1e-4, 0.9, 0.999, 1e-8};
};

// Picks a launch shape that fits the current device (a cluster of blocks per head that keeps Q, K and the
// moments in shared memory where it can), then launches one persistent kernel for all steps on `stream`
// (a cudaStream_t). Returns "" on success, otherwise why nothing was launched.
std::string launch_fit(const FitArgs& args, void* stream);

}  // namespace cuda
}  // namespace impulse_fit
