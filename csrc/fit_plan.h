// Launch planner of the CUDA fit: which launch shapes fit a device, in order of preference, and the shared-memory
// layout of each. A launch shape says how many blocks serve one head (a thread-block cluster of 8 or 4 on sm_90,
// one block elsewhere), where the head's Q, K and Adam moments live (shared memory for the whole run, or global
// memory, i.e. L2), where the block's columns of B live (shared or global memory), and whether the block's rows of
// the N×N map are processed all at once or in tiles (U and W held for one tile of rows at a time).
//
// Pure host code, no CUDA or torch headers: the launcher (fit_cuda.cu) plans with it, the extension exposes it to
// Python (impulse_attn._C.plan_launch) and the tests run it against the shared-memory limits of real GPUs, and the
// CPU emulation of the kernel (tests/cuda_emu/) runs the kernel with the very layouts it plans. What is tested is
// what launches.
#pragma once

#include <string>
#include <vector>

namespace impulse_fit {
namespace plan {

constexpr int kThreads = 256;  // threads per block (the kernel's __launch_bounds__)
constexpr int kWarps = kThreads / 32;
constexpr int kDefaultMaxTileRows = 64;  // map rows per tile of the tiled shapes (fewer when they do not fit)
constexpr int kMinCodeVersionForClusters = 90;

struct Shape {
  int cluster;        // blocks per head (a thread-block cluster when > 1)
  bool state_shared;  // Q, K and the four Adam moments of the block's rows of D in shared memory
  bool b_shared;      // B's columns of the block's rows of D in shared memory
  bool tiled;         // the block's map rows in tiles (otherwise all of them at once)
};

// Every launch shape, in order of preference: the planner offers the feasible ones in this order, and the op's
// `plan` argument forces shape number `plan`. Append new shapes at the end or renumber the docs and tests.
constexpr Shape kShapes[] = {
    {8, true, true, false},    // 0  sm_90: cluster of 8, everything on chip (the fastest shape)
    {4, true, true, false},    // 1  sm_90: cluster of 4, everything on chip
    {8, false, true, false},   // 2  sm_90: cluster of 8, state in L2
    {8, false, false, true},   // 3  sm_90: cluster of 8, state and B in L2, map rows in tiles (large problems)
    {1, true, true, false},    // 4  one block per head, everything on chip (small problems)
    {1, false, true, false},   // 5  one block per head, state in L2
    {1, false, true, true},    // 6  one block per head, state in L2, map rows in tiles
    {1, false, false, false},  // 7  one block per head, state and B in L2
    {1, false, false, true},   // 8  one block per head, state and B in L2, map rows in tiles (the smallest)
};
constexpr int kNumShapes = static_cast<int>(sizeof(kShapes) / sizeof(kShapes[0]));

// "cluster of 8 blocks, state in shared memory, B in shared memory, map rows whole"
std::string describe(const Shape& s);

// The problem, as the op sees it: `basis` is the size of the factored basis X = A·B (A: N×basis, B: basis×D).
struct Problem {
  long long layers = 0, heads = 0, n = 0, d = 0, r = 0, basis = 0;
};

// What the planner needs to know about the device and the loaded kernel (fit_cuda.cu reads them with
// cudaDeviceGetAttribute and cudaFuncGetAttributes).
struct DeviceLimits {
  int cc_major = 0, cc_minor = 0;  // compute capability
  long long smem_optin = 0;        // shared memory per block with opt-in (sharedMemPerBlockOptin), bytes
  long long static_smem = 0;       // the kernel's static shared memory (cudaFuncAttributes::sharedSizeBytes)
  int code_version = 0;            // the loaded kernel's code: min(binaryVersion, ptxVersion), e.g. 80 or 90
  long long max_grid_y = 65535;    // maxGridSize[1]: heads per launch
  bool cluster_launch = false;     // cudaDevAttrClusterLaunch
};

// Offsets (in floats) of the block's arrays in dynamic shared memory; -1: the array is not in shared memory.
// With one block per head the partial sums are the full sums: bqp == bq, bkp == bk, cp == c, colp == colf.
struct Layout {
  int state;     // 6 × (ds, r): q, k, mq, vq, mk, vk                          (state_shared only)
  int bs;        // (basis, ds): B's columns of the block's rows of D           (b_shared only)
  int bqp, bkp;  // (basis, r) partial B·Q, B·K over the block's rows (read by the cluster)
  int bq, bk;    // (basis, r) full
  int core;      // (basis, basis) s·BQ·BKᵀ
  int u, w;      // (tile_rows, basis) U and W rows of one tile of the block's map rows
  int cp, c;     // (basis, basis) partial and full Aᵀ·G·A
  int dbq, dbk;  // (basis, r)
  int colp;      // (2r) partial column sums of squares (read by the cluster)
  int colf;      // (2r) renormalization factors
  int rowbuf;    // (kWarps, n) one map row per warp
  int lossp;     // (kWarps + 1) per-warp losses, then the block's (read by the cluster)
  int total;     // floats in all
};

// Shared-memory floats of `shape` with tiles of `tile_rows` map rows (int64: nothing here overflows for sizes up
// to 2^16). Also fills *layout when it is not null and the total fits in an int.
long long layout_floats(const Problem& p, const Shape& shape, long long tile_rows, Layout* layout);

struct Plan {
  int shape_id = -1;
  Shape shape{};
  int rows_per_block = 0;      // ns = ceil(N / cluster): the block's map rows
  int cols_per_block = 0;      // ds = ceil(D / cluster): the block's rows of D (of Q, K, B's columns)
  int tile_rows = 0;           // map rows per tile (= rows_per_block when not tiled)
  long long heads_per_launch = 0;  // grid.y; more heads than the grid allows run in several launches
  long long launches = 0;
  long long dynamic_bytes = 0;
  Layout layout{};
};

// Validates the sizes (every size >= 1 and <= 2^16, heads in one call below 2^31); "" when fine.
std::string check_problem(const Problem& p);
// Validates the limits (opt-in above the static bytes, grid y >= 1); "" when fine.
std::string check_limits(const DeviceLimits& dev);

// Plans shape number `shape_id`; "" and *out on success, otherwise why it cannot run on this device.
std::string plan_shape(const Problem& p, const DeviceLimits& dev, int shape_id, Plan* out,
                       int max_tile_rows = kDefaultMaxTileRows);

struct Planned {
  std::vector<Plan> plans;  // every feasible shape, in order of preference (plans[0] is what launches)
  std::string reason;       // when plans is empty: why nothing fits
};
Planned plan_launch(const Problem& p, const DeviceLimits& dev, int max_tile_rows = kDefaultMaxTileRows);

}  // namespace plan
}  // namespace impulse_fit
