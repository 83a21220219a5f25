// The CPU twin of the fused impulse fit: one attention head's whole Adam schedule, run through the factored
// basis X = A·B. This file and the CUDA kernel (fit_cuda_kernel.cuh) are a deliberate CPU/CUDA twin: the same
// algebra, step for step, with the per-element math (exp, softmax backward, Adam update, renorm factor) shared
// through fit_math.h, so the CPU tests check the arithmetic the GPU runs. No torch headers (ops.cpp adds the
// dispatcher and the threading over heads), so this file also builds on its own for quick experiments.
//
// One step of one head (N tokens, width D, rank r, basis size `basis`, scale s), in the order of the reference
// (impulse_attn/fitting/iterative.py), with every product routed through the factors:
//   renormalize Q, K                         (every `renorm_every` steps, before the loss)
//   BQ = B·Q, BK = B·K                        basis×r each: 2·basis·D·r multiply-adds
//   core = s·BQ·BKᵀ, U = A·core               logits = U·Aᵀ = s·X Q Kᵀ Xᵀ
//   per block of rows: logits = U·Aᵀ, softmax, dL/dp = 2(p − t)/(heads·N²), softmax backward (one fused pass
//   over the row, nothing N×N is stored), W = G·A
//   C = Aᵀ·W (= Aᵀ G A), dBQ = C·BK, dBK = Cᵀ·BQ
//   dQ = Bᵀ·dBQ, dK = Bᵀ·dBK, each tile of rows immediately followed by its Adam update
// Adam and the renormalization act on the full D×r Q and K, so the iterates are the recipe's; only the
// rounding differs from the D-wide products of the reference.
//
// Heads are independent (the layer's loss is a mean over heads, norm0 is fixed at init, Adam is element-wise),
// so a head runs all its steps without synchronizing with any other and its working set (Q, K, two moments
// each, the factors, the targets: about 1.3 MB at the paper's size) stays in one core's L2 cache.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

#include "fit_math.h"

// The vector helpers below are always inlined into functions compiled for the matching instruction set, so
// the "vector return changes the ABI" note never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace impulse_fit {
namespace cpu {

// One head's problem. All matrices are row-major and contiguous.
template <class T>
struct HeadProblem {
  int n = 0, d = 0, r = 0, basis = 0;  // tokens, width, rank (head dim), basis size
  int heads = 1;                   // heads of the layer: the loss is a mean over them
  const T* a = nullptr;            // (n, basis)  X = A·B
  const T* b = nullptr;            // (basis, d)
  const T* target = nullptr;       // (n, n)
  T* q = nullptr;                  // (d, r)  in: start, out: result
  T* kk = nullptr;                 // (d, r)
  T* mq = nullptr;                 // (d, r)  Adam moments, in/out
  T* vq = nullptr;
  T* mk = nullptr;
  T* vk = nullptr;
  T norm0 = 0;                     // the layer's renormalization target
  T scale = 0;                     // softmax scale s
  long long step0 = 0;             // steps already taken (Adam's t and the renorm phase continue from it)
  long long steps = 0;
  int renorm_every = 0;
  int renorm_mode = kRenormNone;
  AdamHyper adam{};                // defaults: fit_constants.h
  T* loss = nullptr;               // out: mean over N² of (p − t)² at the last forward pass
};

constexpr int kPad = 16;  // every vectorized dimension is padded to this many elements (>= any vector width)
constexpr int kRowBlock = 8;

template <class T, int W>
struct VecType {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
};
template <class T, int W>
using vec_t = typename VecType<T, W>::type;

#define FC_INLINE inline __attribute__((always_inline))

template <class V, class T>
FC_INLINE V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V, class T>
FC_INLINE void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// C[MR × NV·VW] = A[MR × depth]·B[depth × NV·VW]: MR·NV vector accumulators stay in registers.
template <class T, int VW, int MR, int NV>
FC_INLINE void gemm_tile(int depth, const T* a, int lda, const T* b, int ldb, T* c, int ldc) {
  using V = vec_t<T, VW>;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) acc[i][j] = V{};
  for (int e = 0; e < depth; ++e) {
    V bv[NV];
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) bv[j] = vload<V>(b + static_cast<std::ptrdiff_t>(e) * ldb + j * VW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T av = a[static_cast<std::ptrdiff_t>(i) * lda + e];
#pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) acc[i][j] += bv[j] * av;
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) vstore(c + static_cast<std::ptrdiff_t>(i) * ldc + j * VW, acc[i][j]);
}

template <class T, int VW, int MR, int NV>
FC_INLINE void gemm_rows(int nc, int depth, const T* a, int lda, const T* b, int ldb, T* c, int ldc) {
  int j = 0;
  for (; j + NV * VW <= nc; j += NV * VW) gemm_tile<T, VW, MR, NV>(depth, a, lda, b + j, ldb, c + j, ldc);
  if constexpr (NV >= 4) {
    for (; j + 2 * VW <= nc; j += 2 * VW) gemm_tile<T, VW, MR, 2>(depth, a, lda, b + j, ldb, c + j, ldc);
  }
  if constexpr (NV >= 2) {
    for (; j + VW <= nc; j += VW) gemm_tile<T, VW, MR, 1>(depth, a, lda, b + j, ldb, c + j, ldc);
  }
}

// C[M × nc] = A[M × depth]·B[depth × nc], nc a multiple of VW; overwrites C.
template <class T, int VW, int MR, int NV>
FC_INLINE void gemm(int M, int nc, int depth, const T* a, int lda, const T* b, int ldb, T* c, int ldc) {
  int i = 0;
  for (; i + MR <= M; i += MR)
    gemm_rows<T, VW, MR, NV>(nc, depth, a + static_cast<std::ptrdiff_t>(i) * lda, lda, b, ldb,
                             c + static_cast<std::ptrdiff_t>(i) * ldc, ldc);
  for (; i < M; ++i)
    gemm_rows<T, VW, 1, NV>(nc, depth, a + static_cast<std::ptrdiff_t>(i) * lda, lda, b, ldb,
                            c + static_cast<std::ptrdiff_t>(i) * ldc, ldc);
}

// dst (cols × ldd) = srcᵀ for src (rows × cols, leading dim lds); dst's columns >= rows are zeroed.
template <class T>
FC_INLINE void transpose(int rows, int cols, const T* src, int lds, T* dst, int ldd) {
  for (int j = 0; j < cols; ++j) {
    T* out = dst + static_cast<std::ptrdiff_t>(j) * ldd;
    for (int i = 0; i < rows; ++i) out[i] = src[static_cast<std::ptrdiff_t>(i) * lds + j];
    for (int i = rows; i < ldd; ++i) out[i] = T(0);
  }
}

// Per-thread scratch for one head, 64-byte aligned; padded dims: np (tokens), basis_p (basis), rp (rank).
template <class T>
struct Workspace {
  int n, d, r, basis, np, basis_p, rp;
  T* mem = nullptr;
  T *q, *kk, *mq, *vq, *mk, *vk;  // (d, rp)
  T *at, *ap, *b, *bt;            // (basis, np), (n, basis_p), (basis, d), (d, basis_p)
  T *bq, *bk, *bkt, *core, *u;    // (basis_p, rp) ×2, (rp, basis_p), (basis_p, basis_p), (n, basis_p)
  T *rows, *w, *c, *ct;           // (kRowBlock, np), (n, basis_p), (basis_p, basis_p) ×2
  T *dbq, *dbk, *grad, *colf;     // (basis_p, rp) ×2, (4, rp), (rp)

  static std::size_t elements(int n, int d, int r, int basis) {
    const std::size_t np = round_up(n, kPad), basis_p = round_up(basis, kPad), rp = round_up(r, kPad);
    const std::size_t dd = round_up(d, kPad);
    return 6 * dd * rp + basis_p * np + np * basis_p + basis_p * dd + dd * basis_p + 2 * basis_p * rp +
           rp * basis_p + basis_p * basis_p + np * basis_p + kRowBlock * np + np * basis_p + 2 * basis_p * basis_p +
           2 * basis_p * rp + 4 * rp + rp;
  }

  Workspace(int n_, int d_, int r_, int basis_) : n(n_), d(d_), r(r_), basis(basis_) {
    np = round_up(n, kPad);
    basis_p = round_up(basis, kPad);
    rp = round_up(r, kPad);
    const std::size_t dd = round_up(d, kPad);
    const std::size_t bytes = (elements(n, d, r, basis) * sizeof(T) + 63) / 64 * 64;
    mem = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (mem == nullptr) throw std::bad_alloc();
    std::memset(mem, 0, bytes);
    T* p = mem;
    auto take = [&p](std::size_t count) {  // every count is a multiple of kPad, so every array stays aligned
      T* out = p;
      p += count;
      return out;
    };
    q = take(dd * rp); kk = take(dd * rp); mq = take(dd * rp); vq = take(dd * rp); mk = take(dd * rp);
    vk = take(dd * rp);
    at = take(std::size_t(basis_p) * np); ap = take(std::size_t(np) * basis_p); b = take(std::size_t(basis_p) * dd);
    bt = take(dd * basis_p);
    bq = take(std::size_t(basis_p) * rp); bk = take(std::size_t(basis_p) * rp); bkt = take(std::size_t(rp) * basis_p);
    core = take(std::size_t(basis_p) * basis_p); u = take(std::size_t(np) * basis_p);
    rows = take(std::size_t(kRowBlock) * np); w = take(std::size_t(np) * basis_p);
    c = take(std::size_t(basis_p) * basis_p); ct = take(std::size_t(basis_p) * basis_p);
    dbq = take(std::size_t(basis_p) * rp); dbk = take(std::size_t(basis_p) * rp); grad = take(4 * std::size_t(rp));
    colf = take(rp);
  }
  ~Workspace() { std::free(mem); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // Copy the factors in, padded and in the layouts the products want.
  void load_basis(const T* a_in, const T* b_in) {
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < basis; ++j) {
        ap[static_cast<std::ptrdiff_t>(i) * basis_p + j] = a_in[static_cast<std::ptrdiff_t>(i) * basis + j];
        at[static_cast<std::ptrdiff_t>(j) * np + i] = a_in[static_cast<std::ptrdiff_t>(i) * basis + j];
      }
    for (int j = 0; j < basis; ++j)
      for (int i = 0; i < d; ++i) {
        b[static_cast<std::ptrdiff_t>(j) * d + i] = b_in[static_cast<std::ptrdiff_t>(j) * d + i];
        bt[static_cast<std::ptrdiff_t>(i) * basis_p + j] = b_in[static_cast<std::ptrdiff_t>(j) * d + i];
      }
  }
  // (d, r) <-> (d, rp)
  void load_matrix(T* dst, const T* src) const {
    for (int i = 0; i < d; ++i)
      std::memcpy(dst + static_cast<std::ptrdiff_t>(i) * rp, src + static_cast<std::ptrdiff_t>(i) * r,
                  sizeof(T) * r);
  }
  void store_matrix(T* dst, const T* src) const {
    for (int i = 0; i < d; ++i)
      std::memcpy(dst + static_cast<std::ptrdiff_t>(i) * r, src + static_cast<std::ptrdiff_t>(i) * rp,
                  sizeof(T) * r);
  }
};

// Softmax of one row of logits, its MSE against the target row and the backward pass back to the logits,
// in place: row holds logits on entry and d loss / d raw logit (before the scale) on exit. Returns Σ (p − t)².
// Deliberate CPU/CUDA twin: the warp-per-row pass of fit_cuda_kernel.cuh computes the same sums in the same roles.
template <class T>
FC_INLINE T row_softmax_mse(T* __restrict row, const T* __restrict t, int n, T coef, T scale) {
  T mx = row[0];
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < n; ++j) mx = row[j] > mx ? row[j] : mx;
  T s1 = 0, s2 = 0, s3 = 0, s4 = 0;
#pragma omp simd reduction(+ : s1, s2, s3, s4)
  for (int j = 0; j < n; ++j) {
    const T e = fm_exp(row[j] - mx);
    row[j] = e;
    s1 += e;
    s2 += e * e;
    s3 += t[j] * e;
    s4 += t[j] * t[j];
  }
  const RowStats<T> st = row_stats(s1, s2, s3, s4, coef);
#pragma omp simd
  for (int j = 0; j < n; ++j) {
    const T p = row[j] * st.inv_sum;
    row[j] = softmax_backward(p, mse_grad(p, t[j], coef), st.dot, scale);
  }
  return st.loss;
}

template <class T>
FC_INLINE void renorm_columns(T* __restrict m, int d, int r, int rp, T norm0, T* __restrict f) {
  for (int c = 0; c < rp; ++c) f[c] = T(0);
  for (int i = 0; i < d; ++i) {
    const T* row = m + static_cast<std::ptrdiff_t>(i) * rp;
#pragma omp simd
    for (int c = 0; c < rp; ++c) f[c] += row[c] * row[c];
  }
  for (int c = 0; c < r; ++c) f[c] = renorm_factor(f[c], norm0);
  for (int c = r; c < rp; ++c) f[c] = T(0);  // padding columns stay zero
  for (int i = 0; i < d; ++i) {
    T* row = m + static_cast<std::ptrdiff_t>(i) * rp;
#pragma omp simd
    for (int c = 0; c < rp; ++c) row[c] *= f[c];
  }
}

template <class T>
FC_INLINE void renorm_rows(T* __restrict m, int d, int rp, T norm0) {
  for (int i = 0; i < d; ++i) {
    T* row = m + static_cast<std::ptrdiff_t>(i) * rp;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < rp; ++c) ss += row[c] * row[c];
    const T f = renorm_factor(ss, norm0);
#pragma omp simd
    for (int c = 0; c < rp; ++c) row[c] *= f;
  }
}

// Tile shapes for one instruction set: VB = vector bytes; MR×NV accumulators for the general products,
// MRW×NVW for the row pass's W = G·A (few columns, many rows).
template <int VB, int MR_, int NV_, int MRW_, int NVW_>
struct Arch {
  template <class T>
  static constexpr int vw = VB / static_cast<int>(sizeof(T));
  static constexpr int MR = MR_, NV = NV_, MRW = MRW_, NVW = NVW_;
};
using ArchAvx512 = Arch<64, 4, 4, 8, 2>;
using ArchAvx2 = Arch<32, 4, 2, 4, 2>;
using ArchBase = Arch<16, 4, 2, 4, 2>;

// Forward and backward of the current Q, K (already in ws.q, ws.kk): fills ws.bq, ws.bk, ws.dbq, ws.dbk and
// returns Σ over the N² entries of (p − t)².
template <class T, class A>
FC_INLINE T forward_backward(Workspace<T>& ws, const T* target, T scale, T coef) {
  constexpr int VW = A::template vw<T>;
  const int n = ws.n, d = ws.d, basis = ws.basis, np = ws.np, basis_p = ws.basis_p, rp = ws.rp;
  // Products with `basis` output rows run over basis_m = basis rounded up to the row tile: the factors' padding
  // rows are zero, so the extra rows come out zero, and no row is left to a slow one-row tile.
  const int basis_m = std::min(basis_p, round_up(basis, A::MR));
  gemm<T, VW, A::MR, A::NV>(basis_m, rp, d, ws.b, d, ws.q, rp, ws.bq, rp);
  gemm<T, VW, A::MR, A::NV>(basis_m, rp, d, ws.b, d, ws.kk, rp, ws.bk, rp);
  transpose(basis, rp, ws.bk, rp, ws.bkt, basis_p);
  gemm<T, VW, A::MR, A::NV>(basis_m, basis_p, rp, ws.bq, rp, ws.bkt, basis_p, ws.core, basis_p);
  for (int i = 0; i < basis * basis_p; ++i) ws.core[i] *= scale;
  gemm<T, VW, A::MRW, A::NVW>(n, basis_p, basis, ws.ap, basis_p, ws.core, basis_p, ws.u, basis_p);

  T loss = 0;
  for (int i0 = 0; i0 < n; i0 += kRowBlock) {
    const int rb = std::min(kRowBlock, n - i0);
    gemm<T, VW, A::MR, A::NV>(rb, np, basis, ws.u + static_cast<std::ptrdiff_t>(i0) * basis_p, basis_p, ws.at, np,
                              ws.rows, np);
    for (int i = 0; i < rb; ++i)
      loss += row_softmax_mse(ws.rows + static_cast<std::ptrdiff_t>(i) * np,
                              target + static_cast<std::ptrdiff_t>(i0 + i) * n, n, coef, scale);
    gemm<T, VW, A::MRW, A::NVW>(rb, basis_p, n, ws.rows, np, ws.ap, basis_p,
                                ws.w + static_cast<std::ptrdiff_t>(i0) * basis_p, basis_p);
  }
  gemm<T, VW, A::MR, A::NV>(basis_m, basis_p, n, ws.at, np, ws.w, basis_p, ws.c, basis_p);
  transpose(basis, basis_p, ws.c, basis_p, ws.ct, basis_p);
  gemm<T, VW, A::MR, A::NV>(basis_m, rp, basis, ws.c, basis_p, ws.bk, rp, ws.dbq, rp);
  gemm<T, VW, A::MR, A::NV>(basis_m, rp, basis, ws.ct, basis_p, ws.bq, rp, ws.dbk, rp);
  return loss;
}

// dP = Bᵀ·dBP, four rows at a time, each tile handed to `epilogue(row0, rows, tile)` while it is in L1.
template <class T, class A, class F>
FC_INLINE void expand_gradient(Workspace<T>& ws, const T* dbp, F&& epilogue) {
  constexpr int VW = A::template vw<T>;
  constexpr int MR = 4;
  const int d = ws.d, basis = ws.basis, basis_p = ws.basis_p, rp = ws.rp;
  for (int i0 = 0; i0 < d; i0 += MR) {
    const int rows = std::min(MR, d - i0);
    gemm<T, VW, MR, A::NV>(rows, rp, basis, ws.bt + static_cast<std::ptrdiff_t>(i0) * basis_p, basis_p, dbp, rp,
                           ws.grad, rp);
    epilogue(i0, rows, ws.grad);
  }
}

template <class T, class A>
FC_INLINE void run_head(const HeadProblem<T>& pb) {
  Workspace<T> ws(pb.n, pb.d, pb.r, pb.basis);
  ws.load_basis(pb.a, pb.b);
  // the state: (workspace copy, caller's array) for Q, K and their Adam moments
  T* const state[6][2] = {{ws.q, pb.q}, {ws.kk, pb.kk}, {ws.mq, pb.mq}, {ws.vq, pb.vq}, {ws.mk, pb.mk},
                          {ws.vk, pb.vk}};
  for (auto& pair : state) ws.load_matrix(pair[0], pair[1]);
  const int rp = ws.rp;
  const T coef = static_cast<T>(2.0 / (static_cast<double>(pb.heads) * pb.n * pb.n));
  T loss = 0;
  for (long long s = 0; s < pb.steps; ++s) {
    const long long step = pb.step0 + s;
    if (pb.renorm_every > 0 && step % pb.renorm_every == 0 && pb.renorm_mode != kRenormNone) {
      renorm_columns(ws.q, ws.d, ws.r, rp, pb.norm0, ws.colf);
      if (pb.renorm_mode == kRenormCode)
        renorm_rows(ws.kk, ws.d, rp, pb.norm0);
      else
        renorm_columns(ws.kk, ws.d, ws.r, rp, pb.norm0, ws.colf);
    }
    loss = forward_backward<T, A>(ws, pb.target, pb.scale, coef);
    const AdamStep<T> as = adam_step_coefficients<T>(pb.adam, step + 1);
    // Each parameter's update needs only its own gradient, so Q's rows can be updated before K's gradient is
    // formed: dBQ and dBK were both taken from the pre-update Q, K.
    auto adam_rows = [&](T* p, T* m, T* v) {
      return [&as, p, m, v, rp](int i0, int rows, const T* g) {
        const std::ptrdiff_t off = static_cast<std::ptrdiff_t>(i0) * rp;
        T* __restrict pp = p + off;
        T* __restrict mm = m + off;
        T* __restrict vv = v + off;
        const int cnt = rows * rp;
#pragma omp simd
        for (int j = 0; j < cnt; ++j) adam_update(pp[j], mm[j], vv[j], g[j], as);
      };
    };
    expand_gradient<T, A>(ws, ws.dbq, adam_rows(ws.q, ws.mq, ws.vq));
    expand_gradient<T, A>(ws, ws.dbk, adam_rows(ws.kk, ws.mk, ws.vk));
  }
  for (auto& pair : state) ws.store_matrix(pair[1], pair[0]);
  if (pb.loss != nullptr) *pb.loss = pb.steps > 0 ? loss / (static_cast<T>(pb.n) * pb.n) : T(0);
}

// Gradients of the layer loss (mean over heads·N·N) with respect to this head's Q and K, at pb.q, pb.kk;
// no renormalization, no update. dq, dk: (d, r). Writes the head's mean squared error to *pb.loss.
template <class T, class A>
FC_INLINE void head_gradients(const HeadProblem<T>& pb, T* dq, T* dk) {
  Workspace<T> ws(pb.n, pb.d, pb.r, pb.basis);
  ws.load_basis(pb.a, pb.b);
  ws.load_matrix(ws.q, pb.q);
  ws.load_matrix(ws.kk, pb.kk);
  const int r = ws.r, rp = ws.rp;
  const T coef = static_cast<T>(2.0 / (static_cast<double>(pb.heads) * pb.n * pb.n));
  const T loss = forward_backward<T, A>(ws, pb.target, pb.scale, coef);
  auto copy_to = [r, rp](T* out) {
    return [out, r, rp](int i0, int rows, const T* g) {
      for (int i = 0; i < rows; ++i)
        std::memcpy(out + static_cast<std::ptrdiff_t>(i0 + i) * r, g + static_cast<std::ptrdiff_t>(i) * rp,
                    sizeof(T) * r);
    };
  };
  expand_gradient<T, A>(ws, ws.dbq, copy_to(dq));
  expand_gradient<T, A>(ws, ws.dbk, copy_to(dk));
  if (pb.loss != nullptr) *pb.loss = loss / (static_cast<T>(pb.n) * pb.n);
}

// Entry points, one per precision; each picks at run time the widest instruction set this CPU has
// (defined in fit_cpu.cpp).
void fit_head(const HeadProblem<float>& pb);
void fit_head(const HeadProblem<double>& pb);
void fit_head_gradients(const HeadProblem<float>& pb, float* dq, float* dk);
void fit_head_gradients(const HeadProblem<double>& pb, double* dq, double* dk);
const char* instruction_set();

}  // namespace cpu
}  // namespace impulse_fit
