// Per-element math of the fused impulse fit, shared by the CPU twin (fit_cpu.h) and the CUDA kernel
// (fit_cuda_kernel.cuh): the exp of the row softmax, the MSE + softmax backward of one logit, the Adam update of
// one weight and the renormalization factor of one column. This is a deliberate CPU/CUDA twin: everything here is
// an inline function of scalars, so the CPU tests exercise exactly the arithmetic the GPU runs; only the loops
// around it (blocking, summation order) differ.
//
// No torch headers: this file is compiled by the host compiler and by nvcc alike.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fit_constants.h"

#if defined(__CUDACC__)
#define FM_HD __host__ __device__ __forceinline__
#else
#define FM_HD inline __attribute__((always_inline))
#endif

namespace impulse_fit {

// Adam's hyperparameters (defaults in fit_constants.h; the op takes them as arguments).
struct AdamHyper {
  double lr = kAdamLr, beta1 = kAdamBeta1, beta2 = kAdamBeta2, eps = kAdamEps;
};

// The coefficients of Adam step t (1-based), computed in double as torch.optim.Adam's single-tensor path does
// (with Python floats), then rounded to the working precision as ATen rounds a Python scalar operand.
template <class T>
struct AdamStep {
  T one_minus_beta1;  // lerp weight of exp_avg.lerp_(grad, 1 - beta1)
  T beta2;
  T one_minus_beta2;
  T neg_step_size;    // -lr / (1 - beta1^t)
  T inv_bc2_sqrt;     // 1 / sqrt(1 - beta2^t): torch divides by sqrt(1 - beta2^t); multiplying by the
                      // reciprocal saves a vector division per weight and moves the result by at most 1 ulp
  T eps;
};

FM_HD float fm_sqrt(float x) { return sqrtf(x); }
FM_HD double fm_sqrt(double x) { return sqrt(x); }

FM_HD double fm_pow(double a, double b) {
#if defined(__CUDA_ARCH__)
  return ::pow(a, b);
#else
  return std::pow(a, b);
#endif
}

template <class T>
FM_HD AdamStep<T> adam_step_coefficients(const AdamHyper& h, long long t) {
  const double bc1 = 1.0 - fm_pow(h.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - fm_pow(h.beta2, static_cast<double>(t));
  AdamStep<T> a;
  a.one_minus_beta1 = static_cast<T>(1.0 - h.beta1);
  a.beta2 = static_cast<T>(h.beta2);
  a.one_minus_beta2 = static_cast<T>(1.0 - h.beta2);
  a.neg_step_size = static_cast<T>(-(h.lr / bc1));
  a.inv_bc2_sqrt = static_cast<T>(1.0 / fm_sqrt(bc2));
  a.eps = static_cast<T>(h.eps);
  return a;
}

// One Adam update of one weight, in torch's order of operations:
//   exp_avg.lerp_(g, 1 - b1); exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2);
//   denom = exp_avg_sq.sqrt() / sqrt(1 - b2^t) + eps; param.addcdiv_(exp_avg, denom, value=-step_size)
template <class T>
FM_HD void adam_update(T& p, T& m, T& v, T g, const AdamStep<T>& a) {
  m = m + a.one_minus_beta1 * (g - m);
  v = v * a.beta2 + a.one_minus_beta2 * g * g;
  const T denom = fm_sqrt(v) * a.inv_bc2_sqrt + a.eps;
  p = p + a.neg_step_size * m / denom;
}

// The factor that sets a column (or row) of squared norm `sumsq` to `norm0` (renormalize in iterative.py).
template <class T>
FM_HD T renorm_factor(T sumsq, T norm0) {
  return norm0 / fm_sqrt(sumsq);
}

FM_HD float fm_int_bits_as_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#elif defined(__GNUC__)
  return __builtin_bit_cast(float, i);  // unlike memcpy, keeps the exp loop vectorizable
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

// exp of a softmax argument x <= 0 (the row's max already subtracted), Cephes expf: Cody-Waite reduction by
// ln 2, degree-6 polynomial, exponent built from bits. Relative error below 2 ulp; arguments below -87.3 are
// raised to it, which changes only weights below 1e-38. Plain arithmetic and an int conversion, so that a
// compiler vectorizes it on the CPU; the GPU runs the same code. (x > 88 would overflow the exponent bits.)
FM_HD float fm_exp(float x) {
  x = x > -87.3f ? x : -87.3f;
  // n = round(x / ln 2); the +128.5 keeps the argument of the truncating conversion positive.
  const int32_t n = static_cast<int32_t>(x * 1.44269504088896341f + 128.5f) - 128;
  const float fn = static_cast<float>(n);
  float r = x - fn * 0.693359375f;        // ln 2 split in two: fn * 0.693359375f is exact
  r = r - fn * -2.12194440e-4f;
  const float r2 = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r2 + r + 1.0f;
  return y * fm_int_bits_as_float((n + 127) << 23);
}

// The double twin (used by the CPU's float64 parity path) needs no speed: the library exp.
FM_HD double fm_exp(double x) { return exp(x); }

// d loss / d softmax for one entry: loss = mean over heads·N·N of (p - t)^2, coef = 2 / (heads·N·N).
template <class T>
FM_HD T mse_grad(T p, T t, T coef) {
  return coef * (p - t);
}

// d loss / d raw logit for one entry, through softmax and the scale: s · p · (dp - Σ_row dp·p).
template <class T>
FM_HD T softmax_backward(T p, T dp, T row_dot, T scale) {
  return scale * (p * (dp - row_dot));
}

// One softmax row's statistics from the sums of its exponentials e_j = exp(logit_j − max), taken in the same
// pass that forms them: s1 = Σ e, s2 = Σ e², s3 = Σ t·e, s4 = Σ t². With p = e / s1,
//   Σ_row dp·p = coef·(Σ p² − Σ t·p)   (the softmax backward's row dot product)
//   Σ_row (p − t)² = Σ p² − 2 Σ t·p + Σ t²   (the row's share of the loss)
// so the row is read once to form p and these, and once more for the backward: no separate pass for them.
template <class T>
struct RowStats {
  T inv_sum, dot, loss;
};

template <class T>
FM_HD RowStats<T> row_stats(T s1, T s2, T s3, T s4, T coef) {
  const T inv = T(1) / s1;
  const T sum_pp = s2 * inv * inv;
  const T sum_tp = s3 * inv;
  return RowStats<T>{inv, coef * (sum_pp - sum_tp), sum_pp - T(2) * sum_tp + s4};
}

// Round n up to a multiple of m.
FM_HD int round_up(int n, int m) { return (n + m - 1) / m * m; }

}  // namespace impulse_fit
