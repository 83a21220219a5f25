// The fused fit's CUDA kernel, in a header so that two programs compile it: fit_cuda.cu (nvcc, for the GPU) and
// the tests' thread-level emulation (tests/cuda_emu/, g++, one std::thread per CUDA thread), which runs this exact
// code on the CPU and compares it with the CPU twin. Only the few primitives below differ between the two.
//
// This kernel and the CPU twin (fit_cpu.h) are a deliberate CPU/CUDA twin: the same algebra, step for step, with
// the per-element math (exp, softmax backward, Adam update, renorm factor) shared through fit_math.h, so the CPU
// tests check the arithmetic the GPU runs; only the loops and the summation order differ.
//
// A head is served by `cl` blocks (a thread-block cluster of 8 or 4 on sm_90, one block elsewhere); the launch
// shape (fit_plan.h) also says where the state and B live and how the map rows are tiled. Block `rank` owns
// rows [rank·ds, (rank+1)·ds) of the head's Q, K and Adam moments, in its shared memory for the whole run or in
// global memory, and rows [rank·ns, (rank+1)·ns) of the N×N map. Per step:
//   renorm (every renorm_every steps): column sums of squares, summed over the cluster, then rescale
//   partial B·Q, B·K over the block's rows              -> cluster sum (distributed shared memory)
//   core = s·BQ·BKᵀ (basis×basis)
//   per tile of the block's map rows: U = A_tile·core, then per warp and map row: logits = U_i·Aᵀ, softmax, MSE
//   and softmax backward (fit_math.h), W_i = G_i·A; partial C += A_tileᵀ·W_tile
//   partial C                                           -> cluster sum
//   dBQ = C·BK, dBK = Cᵀ·BQ; for the block's rows dQ = Bᵀ·dBQ, dK = Bᵀ·dBK, then Adam in place
// Every block sums the cluster's partials in the same rank order, so all blocks hold bitwise equal full
// values and compute the small basis×basis and basis×r products redundantly instead of broadcasting them.
// Accumulation is fp32. Launch shapes with the same cluster size compute the same bits: where the state and B
// live changes no arithmetic, and tiles are whole multiples of the warp count (see the tile loop).
#pragma once

#include "fit_cuda.h"
#include "fit_math.h"
#include "fit_plan.h"

#if !defined(IMPULSE_FIT_EMULATE)
#include <cooperative_groups.h>
#define FK_KERNEL __global__ void __launch_bounds__(256)
#define FK_DEVICE __device__ __forceinline__
#define FK_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define FK_STATIC_SHARED(type, name) __shared__ type name
#endif
// (The emulation defines the same macros and the cluster primitives before including this file.)

namespace impulse_fit {
namespace cuda {
namespace {

#if !defined(IMPULSE_FIT_EMULATE)
// Cluster primitives; a one-block "cluster" (cl == 1, and every launch before sm_90) needs none of them.
FK_DEVICE void cluster_sync(int cl) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cl > 1) {
    cooperative_groups::this_cluster().sync();
    return;
  }
#endif
  (void)cl;
  __syncthreads();
}

FK_DEVICE const float* peer(const float* local, int rank, int cl) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cl > 1) return cooperative_groups::this_cluster().map_shared_rank(const_cast<float*>(local), rank);
#endif
  (void)rank;
  (void)cl;
  return local;
}

FK_DEVICE int cluster_rank(int cl) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cl > 1) return static_cast<int>(cooperative_groups::this_cluster().block_rank());
#endif
  (void)cl;
  return 0;
}
#endif

using plan::kThreads;
using plan::kWarps;
static_assert(kThreads == 256, "FK_KERNEL declares __launch_bounds__(256)");

struct Params {
  FitArgs args;
  plan::Layout lay;  // the planner's layout of dynamic shared memory (fit_plan.h)
  int cl;            // blocks per head (cluster size)
  int tile_rows;     // map rows per tile (>= the block's rows: all at once)
  bool state_shared, b_shared;
  int head0;         // head of blockIdx.y == 0 (a problem with more heads than grid.y allows runs in launches)
};

// The kernel's parameters for one launch of a plan. Host code, used by fit_cuda.cu and by the emulation.
inline Params make_params(const FitArgs& args, const plan::Plan& pl, long long head0) {
  Params prm;
  prm.args = args;
  prm.lay = pl.layout;
  prm.cl = pl.shape.cluster;
  prm.tile_rows = pl.tile_rows;
  prm.state_shared = pl.shape.state_shared;
  prm.b_shared = pl.shape.b_shared;
  prm.head0 = static_cast<int>(head0);
  return prm;
}

// Two dot products sharing their first operand, summed in index order: aq = Σ_c x[c·xs]·yq[c·ys],
// ak = Σ_c x[c·xs]·yk[c·ys], c in [0, len).
FK_DEVICE void dot2(const float* x, int xs, const float* yq, const float* yk, int ys, int len, float& aq,
                    float& ak) {
  float sq = 0.f, sk = 0.f;
  for (int c = 0; c < len; ++c) {
    const float xv = x[c * xs];
    sq += xv * yq[c * ys];
    sk += xv * yk[c * ys];
  }
  aq = sq;
  ak = sk;
}

FK_DEVICE float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

FK_DEVICE float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// dst[i] = Σ_rank src@rank[i], summed in rank order by every block (bitwise equal results).
FK_DEVICE void cluster_reduce(const float* src, float* dst, int count, int cl) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) dst[i] = 0.f;
  for (int rk = 0; rk < cl; ++rk) {
    const float* p = peer(src, rk, cl);
    for (int i = threadIdx.x; i < count; i += blockDim.x) dst[i] += p[i];
  }
}

FK_KERNEL fit_kernel(const Params prm) {
  FK_DYNAMIC_SHARED(float4, smem_f4);
  float* sm = reinterpret_cast<float*>(smem_f4);
  FK_STATIC_SHARED(AdamStep<float>, adam_step);
  const FitArgs& a = prm.args;
  const plan::Layout& lay = prm.lay;
  const int cl = prm.cl;
  const int rank = cluster_rank(cl);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int head = prm.head0 + static_cast<int>(blockIdx.y);
  const int layer = head / a.heads;
  const int n = a.n, d = a.d, r = a.r, basis = a.basis;
  const int ds = (d + cl - 1) / cl, ns = (n + cl - 1) / cl;
  const int d0 = min(d, rank * ds), dl = min(d, d0 + ds) - d0;
  const int n0 = min(n, rank * ns), nl = min(n, n0 + ns) - n0;
  const int tile = prm.tile_rows;
  const size_t slice = static_cast<size_t>(head) * d * r + static_cast<size_t>(d0) * r;
  const bool grad_mode = a.grad_q != nullptr && a.grad_k != nullptr;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  // Code compiled without clusters cannot serve a cluster launch (the planner never plans one for it): leave the
  // state untouched and report a NaN loss rather than compute with every block taking itself for rank 0.
  if (cl > 1) {
    if (tid == 0 && blockIdx.x == 0) a.loss[head] = __int_as_float(0x7fc00000);
    return;
  }
#endif

  float *q, *kk, *mq, *vq, *mk, *vk;
  if (prm.state_shared) {
    float* st = sm + lay.state;
    const int sz = ds * r;
    q = st; kk = st + sz; mq = st + 2 * sz; vq = st + 3 * sz; mk = st + 4 * sz; vk = st + 5 * sz;
    for (int i = tid; i < dl * r; i += kThreads) {
      q[i] = a.q[slice + i]; kk[i] = a.kk[slice + i];
      mq[i] = a.mq[slice + i]; vq[i] = a.vq[slice + i];
      mk[i] = a.mk[slice + i]; vk[i] = a.vk[slice + i];
    }
  } else {
    q = a.q + slice; kk = a.kk + slice; mq = a.mq + slice; vq = a.vq + slice; mk = a.mk + slice;
    vk = a.vk + slice;
  }
  // B's columns of the block's rows of D: bcol[c * bld + i] = B[c, d0 + i], copied to shared memory or read in
  // place (global memory: B is the same for every head, so it stays in L2 and L1).
  const float* bcol;
  int bld;
  if (prm.b_shared) {
    float* bs = sm + lay.bs;
    for (int i = tid; i < basis * dl; i += kThreads) bs[i] = a.b[static_cast<size_t>(i / dl) * d + d0 + i % dl];
    bcol = bs;
    bld = dl;
  } else {
    bcol = a.b + d0;
    bld = d;
  }
  // With one block per head the partial arrays are the full ones (the planner aliases them) and nothing is
  // reduced over a cluster.
  float* bqp = sm + lay.bqp; float* bkp = sm + lay.bkp;
  float* bq = sm + lay.bq; float* bk = sm + lay.bk;
  float* core = sm + lay.core; float* u = sm + lay.u; float* w = sm + lay.w;
  float* cp = sm + lay.cp; float* cfull = sm + lay.c;
  float* dbq = sm + lay.dbq; float* dbk = sm + lay.dbk;
  float* colp = sm + lay.colp; float* colf = sm + lay.colf;
  float* row = sm + lay.rowbuf + warp * n;
  float* lossp = sm + lay.lossp;
  const float* A = a.a;
  const float* AT = a.at;
  const float* T = a.targets + static_cast<size_t>(head) * n * n;
  const float norm0 = a.norm0[layer];
  const float scale = a.scale;
  const float coef = static_cast<float>(2.0 / (static_cast<double>(a.loss_heads) * n * n));
  if (tid < kWarps + 1) lossp[tid] = 0.f;
  __syncthreads();

  for (long long s = 0; s < a.steps; ++s) {
    const long long step = a.step0 + s;
    if (tid == 0 && !grad_mode) adam_step = adam_step_coefficients<float>(a.adam, step + 1);

    if (!grad_mode && a.renorm_mode != kRenormNone && a.renorm_every > 0 && step % a.renorm_every == 0) {
      const bool k_columns = a.renorm_mode == kRenormColumns;
      for (int j = tid; j < 2 * r; j += kThreads) {
        const bool is_k = j >= r;
        float ss = 0.f;
        if (!is_k || k_columns) {
          const float* m = is_k ? kk : q;
          const int c = is_k ? j - r : j;
          for (int i = 0; i < dl; ++i) ss += m[i * r + c] * m[i * r + c];
        }
        colp[j] = ss;
      }
      cluster_sync(cl);
      if (cl > 1) cluster_reduce(colp, colf, 2 * r, cl);
      __syncthreads();
      for (int j = tid; j < 2 * r; j += kThreads) colf[j] = renorm_factor(colf[j], norm0);
      __syncthreads();
      for (int i = tid; i < dl * r; i += kThreads) {
        q[i] *= colf[i % r];
        if (k_columns) kk[i] *= colf[r + i % r];
      }
      if (!k_columns) {  // the public code's K rows (norm over r): local to the block
        for (int i = warp; i < dl; i += kWarps) {
          float ss = 0.f;
          for (int c = lane; c < r; c += 32) ss += kk[i * r + c] * kk[i * r + c];
          const float f = renorm_factor(warp_sum(ss), norm0);
          for (int c = lane; c < r; c += 32) kk[i * r + c] *= f;
        }
      }
      __syncthreads();
    }

    // Partial B·Q and B·K over the block's rows of D.
    for (int idx = tid; idx < basis * r; idx += kThreads) {
      const int c = idx / r, j = idx % r;
      dot2(bcol + c * bld, 1, q + j, kk + j, r, dl, bqp[idx], bkp[idx]);
    }
    cluster_sync(cl);
    if (cl > 1) {
      cluster_reduce(bqp, bq, basis * r, cl);
      cluster_reduce(bkp, bk, basis * r, cl);
    }
    __syncthreads();

    for (int idx = tid; idx < basis * basis; idx += kThreads) {
      const int x = idx / basis, y = idx % basis;
      float acc = 0.f;
      for (int j = 0; j < r; ++j) acc += bq[x * r + j] * bk[y * r + j];
      core[idx] = scale * acc;
    }
    // Each thread zeroes the partial C entries it accumulates below (same idx -> thread map: no barrier needed).
    for (int idx = tid; idx < basis * basis; idx += kThreads) cp[idx] = 0.f;
    __syncthreads();

    // The block's map rows, in tiles of `tile` rows (all at once when tile >= nl): U and W hold one tile.
    // A tile is a multiple of kWarps rows, so each warp serves the same rows, in the same order, as without
    // tiles, and C accumulates over the rows in the same order: every tiling gives the same bits.
    float warp_loss = 0.f;
    for (int t0 = 0; t0 < nl; t0 += tile) {
      const int tl = min(tile, nl - t0);
      for (int idx = tid; idx < tl * basis; idx += kThreads) {
        const int i = idx / basis, c = idx % basis;
        const float* ai = A + static_cast<size_t>(n0 + t0 + i) * basis;
        float acc = 0.f;
        for (int e = 0; e < basis; ++e) acc += ai[e] * core[e * basis + c];
        u[idx] = acc;
      }
      __syncthreads();

      // One warp per map row: logits, softmax, loss, backward, W row. Nothing N×N leaves the warp.
      // Deliberate CPU/CUDA twin of fit_cpu.h's row_softmax_mse: the same sums, one warp per row.
      for (int il = warp; il < tl; il += kWarps) {
        const float* ui = u + il * basis;
        const float* ti = T + static_cast<size_t>(n0 + t0 + il) * n;
        float mx = -INFINITY;
        for (int j = lane; j < n; j += 32) {
          float acc = 0.f;
          for (int c = 0; c < basis; ++c) acc += ui[c] * AT[static_cast<size_t>(c) * n + j];
          row[j] = acc;
          mx = fmaxf(mx, acc);
        }
        mx = warp_max(mx);
        float s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f;
        for (int j = lane; j < n; j += 32) {
          const float e = fm_exp(row[j] - mx);
          row[j] = e;
          s1 += e;
          s2 += e * e;
          s3 += ti[j] * e;
          s4 += ti[j] * ti[j];
        }
        const RowStats<float> st = row_stats(warp_sum(s1), warp_sum(s2), warp_sum(s3), warp_sum(s4), coef);
        warp_loss += st.loss;
        for (int j = lane; j < n; j += 32) {
          const float p = row[j] * st.inv_sum;
          row[j] = softmax_backward(p, mse_grad(p, ti[j], coef), st.dot, scale);
        }
        __syncwarp();
        for (int c = lane; c < basis; c += 32) {
          float acc = 0.f;
          for (int j = 0; j < n; ++j) acc += row[j] * A[static_cast<size_t>(j) * basis + c];
          w[il * basis + c] = acc;
        }
        __syncwarp();
      }
      __syncthreads();

      for (int idx = tid; idx < basis * basis; idx += kThreads) {
        const int x = idx / basis, y = idx % basis;
        float acc = cp[idx];
        for (int i = 0; i < tl; ++i) acc += A[static_cast<size_t>(n0 + t0 + i) * basis + x] * w[i * basis + y];
        cp[idx] = acc;
      }
      __syncthreads();  // the next tile overwrites u and w
    }
    if (lane == 0) lossp[warp] = warp_loss;
    cluster_sync(cl);
    if (cl > 1) cluster_reduce(cp, cfull, basis * basis, cl);
    __syncthreads();

    for (int idx = tid; idx < basis * r; idx += kThreads) {
      const int c = idx / r, j = idx % r;
      float gq = 0.f, gk = 0.f;
      for (int e = 0; e < basis; ++e) {
        gq += cfull[c * basis + e] * bk[e * r + j];
        gk += cfull[e * basis + c] * bq[e * r + j];
      }
      dbq[idx] = gq;
      dbk[idx] = gk;
    }
    __syncthreads();

    for (int idx = tid; idx < dl * r; idx += kThreads) {
      const int i = idx / r, j = idx % r;
      float gq, gk;
      dot2(bcol + i, bld, dbq + j, dbk + j, r, basis, gq, gk);
      if (grad_mode) {
        a.grad_q[slice + idx] = gq;
        a.grad_k[slice + idx] = gk;
      } else {
        adam_update(q[idx], mq[idx], vq[idx], gq, adam_step);
        adam_update(kk[idx], mk[idx], vk[idx], gk, adam_step);
      }
    }
    __syncthreads();
  }

  if (tid == 0) {
    float total = 0.f;
    for (int i = 0; i < kWarps; ++i) total += lossp[i];
    lossp[kWarps] = total;
  }
  cluster_sync(cl);
  if (rank == 0 && tid == 0) {
    float total = 0.f;
    for (int rk = 0; rk < cl; ++rk) total += peer(lossp, rk, cl)[kWarps];
    a.loss[head] = a.steps > 0 ? total / (static_cast<float>(n) * n) : 0.f;
  }
  if (prm.state_shared && !grad_mode) {
    for (int i = tid; i < dl * r; i += kThreads) {
      a.q[slice + i] = q[i]; a.kk[slice + i] = kk[i];
      a.mq[slice + i] = mq[i]; a.vq[slice + i] = vq[i];
      a.mk[slice + i] = mk[i]; a.vk[slice + i] = vk[i];
    }
  }
  cluster_sync(cl);  // no block leaves while a peer may still read its shared memory
}

}  // namespace
}  // namespace cuda
}  // namespace impulse_fit
