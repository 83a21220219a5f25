// The constants the CPU twin (fit_cpu.h), the CUDA kernel (fit_cuda_kernel.cuh), the launcher (fit_cuda.cu) and
// the op schema (ops.cpp) share, in one place. The schema's default values are spelled by the macros below, so
// the strings in the schema and the numbers the C++ code uses come from the same tokens (and ops.cpp
// static_asserts that they agree).
//
// No torch or CUDA headers: compiled by the host compiler and by nvcc alike.
#pragma once

// torch.optim.Adam's defaults (the published recipe uses them; impulse_attn.fitting.reduced.ADAM_BETAS/ADAM_EPS).
#define IMPULSE_FIT_ADAM_BETA1 0.9
#define IMPULSE_FIT_ADAM_BETA2 0.999
#define IMPULSE_FIT_ADAM_EPS 1e-08
// The op's `plan` argument: -1 lets the planner pick the launch shape; >= 0 forces launch shape number `plan`.
#define IMPULSE_FIT_PLAN_BEST -1
// The op's `loss_heads` argument: 0 means "the number of heads of the layer".
#define IMPULSE_FIT_LOSS_HEADS_DEFAULT 0

#define IMPULSE_FIT_STR_(x) #x
#define IMPULSE_FIT_STR(x) IMPULSE_FIT_STR_(x)

namespace impulse_fit {

constexpr double kAdamBeta1 = IMPULSE_FIT_ADAM_BETA1;
constexpr double kAdamBeta2 = IMPULSE_FIT_ADAM_BETA2;
constexpr double kAdamEps = IMPULSE_FIT_ADAM_EPS;
constexpr double kAdamLr = 1e-4;  // the recipe's learning rate (the op takes lr without a default)
constexpr int kPlanBest = IMPULSE_FIT_PLAN_BEST;
constexpr int kLossHeadsDefault = IMPULSE_FIT_LOSS_HEADS_DEFAULT;

// Renormalization modes, the same order as impulse_attn.fitting.iterative.RENORM_MODES ("code", "columns",
// "none"): the op's renorm_mode argument is an index into that tuple.
enum RenormMode : int { kRenormCode = 0, kRenormColumns = 1, kRenormNone = 2 };

}  // namespace impulse_fit
