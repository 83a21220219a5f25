// The launch planner of the CUDA fit (see fit_plan.h). Host code only.
#include "fit_plan.h"

#include <algorithm>
#include <climits>
#include <string>

namespace impulse_fit {
namespace plan {
namespace {

constexpr long long kMaxDim = 1 << 16;

long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

// Appends an array of `count` floats at `offset`, 16-byte aligned; returns its offset.
long long take(long long& offset, long long count) {
  const long long at = offset;
  offset += (count + 3) / 4 * 4;
  return at;
}

std::string cc_string(const DeviceLimits& dev) {
  return std::to_string(dev.cc_major) + "." + std::to_string(dev.cc_minor);
}

// Why the cluster shapes cannot run here ("" when they can).
std::string cluster_refusal(const DeviceLimits& dev) {
  if (dev.cc_major < 9)
    return "thread-block clusters need compute capability 9.0 or newer; this GPU is " + cc_string(dev);
  if (dev.code_version < kMinCodeVersionForClusters)
    return "the loaded kernel was compiled for compute capability " + std::to_string(dev.code_version / 10) + "." +
           std::to_string(dev.code_version % 10) +
           " (its cluster code exists only in sm_90 builds); rebuild with TORCH_CUDA_ARCH_LIST including 9.0";
  if (!dev.cluster_launch) return "this GPU does not support cluster launches";
  return "";
}

}  // namespace

std::string describe(const Shape& s) {
  std::string out = s.cluster > 1 ? "cluster of " + std::to_string(s.cluster) + " blocks per head"
                                  : std::string("one block per head");
  out += s.state_shared ? ", state in shared memory" : ", state in global memory";
  out += s.b_shared ? ", B in shared memory" : ", B in global memory";
  out += s.tiled ? ", map rows in tiles" : ", map rows whole";
  return out;
}

long long layout_floats(const Problem& p, const Shape& shape, long long tile_rows, Layout* layout) {
  const long long cl = shape.cluster;
  const long long ds = ceil_div(p.d, cl), basis = p.basis, r = p.r;
  const bool split = cl > 1;  // partial sums in their own arrays, read by the cluster's other blocks
  long long o = 0;
  long long off[17];
  off[0] = shape.state_shared ? take(o, 6 * ds * r) : -1;
  off[1] = shape.b_shared ? take(o, basis * ds) : -1;
  off[4] = take(o, basis * r);  // bq
  off[5] = take(o, basis * r);  // bk
  off[2] = split ? take(o, basis * r) : off[4];  // bqp
  off[3] = split ? take(o, basis * r) : off[5];  // bkp
  off[6] = take(o, basis * basis);               // core
  off[7] = take(o, tile_rows * basis);           // u
  off[8] = take(o, tile_rows * basis);           // w
  off[10] = take(o, basis * basis);              // c
  off[9] = split ? take(o, basis * basis) : off[10];  // cp
  off[11] = take(o, basis * r);                  // dbq
  off[12] = take(o, basis * r);                  // dbk
  off[14] = take(o, 2 * r);                      // colf
  off[13] = split ? take(o, 2 * r) : off[14];    // colp
  off[15] = take(o, static_cast<long long>(kWarps) * p.n);  // rowbuf
  off[16] = take(o, kWarps + 1);                 // lossp
  if (layout != nullptr && o <= INT_MAX) {
    int* f[17] = {&layout->state, &layout->bs,   &layout->bqp, &layout->bkp, &layout->bq,  &layout->bk,
                  &layout->core,  &layout->u,    &layout->w,   &layout->cp,  &layout->c,   &layout->dbq,
                  &layout->dbk,   &layout->colp, &layout->colf, &layout->rowbuf, &layout->lossp};
    for (int i = 0; i < 17; ++i) *f[i] = static_cast<int>(off[i]);
    layout->total = static_cast<int>(o);
  }
  return o;
}

std::string check_problem(const Problem& p) {
  if (p.layers < 1 || p.heads < 1 || p.n < 1 || p.d < 1 || p.r < 1 || p.basis < 1)
    return "every size must be >= 1: layers=" + std::to_string(p.layers) + " heads=" + std::to_string(p.heads) +
           " N=" + std::to_string(p.n) + " D=" + std::to_string(p.d) + " r=" + std::to_string(p.r) +
           " basis=" + std::to_string(p.basis);
  if (p.n > kMaxDim || p.d > kMaxDim || p.r > kMaxDim || p.basis > kMaxDim)
    return "sizes above " + std::to_string(kMaxDim) + " are not supported: N=" + std::to_string(p.n) +
           " D=" + std::to_string(p.d) + " r=" + std::to_string(p.r) + " basis=" + std::to_string(p.basis);
  if (p.layers > INT_MAX / p.heads)
    return std::to_string(p.layers) + " layers x " + std::to_string(p.heads) + " heads are too many for one call";
  return "";
}

std::string check_limits(const DeviceLimits& dev) {
  if (dev.smem_optin <= dev.static_smem)
    return "the device allows " + std::to_string(dev.smem_optin) + " bytes of shared memory per block, no more "
           "than the kernel's " + std::to_string(dev.static_smem) + " static bytes";
  if (dev.max_grid_y < 1) return "the device reports a maximum grid y dimension below 1";
  return "";
}

std::string plan_shape(const Problem& p, const DeviceLimits& dev, int shape_id, Plan* out, int max_tile_rows) {
  if (shape_id < 0 || shape_id >= kNumShapes)
    return "launch shape " + std::to_string(shape_id) + " does not exist (0 to " + std::to_string(kNumShapes - 1) +
           ", or -1 for the planner's choice)";
  std::string why = check_problem(p);
  if (why.empty()) why = check_limits(dev);
  if (!why.empty()) return why;
  const Shape shape = kShapes[shape_id];
  const std::string name = "launch shape " + std::to_string(shape_id) + " (" + describe(shape) + ")";
  if (shape.cluster > 1) {
    why = cluster_refusal(dev);
    if (!why.empty()) return name + " cannot run here: " + why;
  }
  const long long budget = dev.smem_optin - dev.static_smem;  // dynamic + static <= opt-in
  const long long ns = ceil_div(p.n, shape.cluster), ds = ceil_div(p.d, shape.cluster);
  long long tile = ns;
  if (shape.tiled) {
    // The largest multiple of kWarps (at most max_tile_rows) that fits: a multiple of kWarps gives every warp the
    // same rows as without tiles, so the tiled shapes compute the same bits as the whole ones.
    const long long cap = std::max<long long>(kWarps, max_tile_rows / kWarps * kWarps);
    tile = std::min(cap, ceil_div(ns, kWarps) * kWarps);
    while (tile > kWarps && layout_floats(p, shape, tile, nullptr) * 4 > budget) tile -= kWarps;
  }
  const long long floats = layout_floats(p, shape, tile, nullptr);
  const long long bytes = floats * 4;
  if (bytes > budget) {
    const long long rowbuf = 4LL * kWarps * p.n, sq = 4 * p.basis * p.basis, br = 4 * p.basis * p.r;
    return name + " needs " + std::to_string(bytes) + " bytes of shared memory per block" +
           (shape.tiled ? " (map rows in tiles of " + std::to_string(tile) + ")" : std::string()) +
           ", the GPU allows " + std::to_string(budget) + " (" + std::to_string(dev.smem_optin) +
           " opt-in per block on compute capability " + cc_string(dev) + ", minus " +
           std::to_string(dev.static_smem) + " of the kernel's static variables); of them, " +
           std::to_string(rowbuf) + " are the " + std::to_string(kWarps) + " warps' row buffers (" +
           std::to_string(kWarps) + " x N=" + std::to_string(p.n) + " floats), " + std::to_string(sq) +
           " each basis x basis array (basis=" + std::to_string(p.basis) + "), " + std::to_string(br) +
           " each basis x r array (r=" + std::to_string(p.r) + ")";
  }
  Plan pl;
  pl.shape_id = shape_id;
  pl.shape = shape;
  pl.rows_per_block = static_cast<int>(ns);
  pl.cols_per_block = static_cast<int>(ds);
  pl.tile_rows = static_cast<int>(tile);
  const long long total_heads = p.layers * p.heads;
  pl.heads_per_launch = std::min(total_heads, dev.max_grid_y);
  pl.launches = ceil_div(total_heads, pl.heads_per_launch);
  pl.dynamic_bytes = bytes;
  layout_floats(p, shape, tile, &pl.layout);  // bytes <= budget < 2^31: the offsets fit in an int
  *out = pl;
  return "";
}

Planned plan_launch(const Problem& p, const DeviceLimits& dev, int max_tile_rows) {
  Planned res;
  std::string why = check_problem(p);
  if (why.empty()) why = check_limits(dev);
  if (!why.empty()) {
    res.reason = why;
    return res;
  }
  std::string last;
  for (int id = 0; id < kNumShapes; ++id) {
    Plan pl;
    const std::string no = plan_shape(p, dev, id, &pl, max_tile_rows);
    if (no.empty())
      res.plans.push_back(pl);
    else
      last = no;  // the last shape is the smallest: its refusal says what is too large
  }
  if (res.plans.empty())
    res.reason = "the CUDA fit does not fit this GPU: even the smallest " + last +
                 ". Reduce the number of tokens N, the basis size or the rank r";
  return res;
}

}  // namespace plan
}  // namespace impulse_fit
