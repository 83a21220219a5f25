// Host side of the CUDA fit: reads the device's limits and the loaded kernel's attributes, plans the launch
// (fit_plan.h) and launches the persistent kernel of fit_cuda_kernel.cuh (one launch runs every step of every
// head, more launches only when there are more heads than grid.y allows). No torch headers: nvcc compiles this
// file alone.
//
// Shared memory: CUDA requires dynamic + static shared memory <= sharedMemPerBlockOptin, and the kernel has
// static shared memory (its Adam coefficients), so the dynamic budget is the opt-in limit minus the kernel's
// static bytes (cudaFuncAttributes::sharedSizeBytes); the planner never plans more, and the attribute
// cudaFuncAttributeMaxDynamicSharedMemorySize is set to exactly that budget.
//
// Clusters: the cluster code paths of the kernel are compiled only for __CUDA_ARCH__ >= 900. A build for, say,
// 8.0+PTX run on an H100 runs code JIT-compiled from compute_80 PTX (binaryVersion 90, ptxVersion 80) that has
// no cluster code, so the code version given to the planner is min(binaryVersion, ptxVersion): clusters are
// planned only when it is >= 90 and the device supports cluster launches.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "fit_cuda.h"
#include "fit_cuda_kernel.cuh"
#include "fit_plan.h"

namespace impulse_fit {
namespace cuda {
namespace {

std::atomic<int> g_last_shape{-1};

std::string cuda_error(const char* what, cudaError_t err) {
  return std::string(what) + ": " + cudaGetErrorString(err);
}

// Launches every head of `args` with plan `pl`: grid (cluster, heads of the launch). Returns "" or the error of
// the first launch that failed, and in *launched how many launches went out before it.
std::string launch_plan(const FitArgs& args, const plan::Plan& pl, cudaStream_t stream, long long* launched) {
  const long long total_heads = static_cast<long long>(args.layers) * args.heads;
  *launched = 0;
  for (long long head0 = 0; head0 < total_heads; head0 += pl.heads_per_launch) {
    const Params prm = make_params(args, pl, head0);
    const long long heads = std::min(pl.heads_per_launch, total_heads - head0);
    const dim3 grid(static_cast<unsigned>(pl.shape.cluster), static_cast<unsigned>(heads));
    const size_t bytes = static_cast<size_t>(pl.dynamic_bytes);
    cudaError_t err;
    if (pl.shape.cluster > 1) {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = grid;
      cfg.blockDim = dim3(kThreads);
      cfg.dynamicSmemBytes = bytes;
      cfg.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = static_cast<unsigned>(pl.shape.cluster);
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      if (head0 == 0) {
        int clusters = 0;
        err = cudaOccupancyMaxActiveClusters(&clusters, fit_kernel, &cfg);
        if (err != cudaSuccess) {
          cudaGetLastError();  // a refused query leaves a (non-sticky) error behind
          return cuda_error("cudaOccupancyMaxActiveClusters", err);
        }
        if (clusters < 1)
          return "no cluster of " + std::to_string(pl.shape.cluster) + " blocks with " + std::to_string(bytes) +
                 " bytes of shared memory each can be resident on this GPU";
      }
      err = cudaLaunchKernelEx(&cfg, fit_kernel, prm);
    } else {
      fit_kernel<<<grid, kThreads, bytes, stream>>>(prm);
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) return cuda_error("fit kernel launch", err);
    ++*launched;
  }
  return "";
}

}  // namespace

std::string device_limits(plan::DeviceLimits* out) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return cuda_error("cudaGetDevice", err);
  plan::DeviceLimits lim;
  int v = 0;
  struct Attr {
    cudaDeviceAttr attr;
    const char* name;
  };
  const Attr attrs[] = {{cudaDevAttrComputeCapabilityMajor, "compute capability major"},
                        {cudaDevAttrComputeCapabilityMinor, "compute capability minor"},
                        {cudaDevAttrMaxSharedMemoryPerBlockOptin, "opt-in shared memory per block"},
                        {cudaDevAttrMaxSharedMemoryPerBlock, "shared memory per block"},
                        {cudaDevAttrMaxGridDimY, "maximum grid y dimension"},
                        {cudaDevAttrClusterLaunch, "cluster launch support"}};
  int values[6] = {};
  for (int i = 0; i < 6; ++i) {
    err = cudaDeviceGetAttribute(&v, attrs[i].attr, dev);
    if (err != cudaSuccess) {
      cudaGetLastError();
      if (attrs[i].attr == cudaDevAttrClusterLaunch) {  // older drivers may not know it: no clusters
        v = 0;
      } else {
        return std::string("cudaDeviceGetAttribute (") + attrs[i].name + "): " + cudaGetErrorString(err);
      }
    }
    values[i] = v;
  }
  lim.cc_major = values[0];
  lim.cc_minor = values[1];
  // Before compute capability 7.0 there is no opt-in: the plain per-block limit applies.
  lim.smem_optin = std::max(values[2], values[3]);
  lim.max_grid_y = values[4];
  lim.cluster_launch = values[5] != 0;

  cudaFuncAttributes fa;
  err = cudaFuncGetAttributes(&fa, fit_kernel);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return cuda_error("cudaFuncGetAttributes(fit_kernel)", err) +
           " (this build of impulse_attn has no kernel code for this GPU, compute capability " +
           std::to_string(lim.cc_major) + "." + std::to_string(lim.cc_minor) +
           "; rebuild with TORCH_CUDA_ARCH_LIST including it)";
  }
  lim.static_smem = static_cast<long long>(fa.sharedSizeBytes);
  lim.code_version = std::min(fa.binaryVersion, fa.ptxVersion > 0 ? fa.ptxVersion : fa.binaryVersion);
  *out = lim;
  return "";
}

std::string launch_fit(const FitArgs& args, void* stream_ptr, int shape) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const long long total_heads = static_cast<long long>(args.layers) * args.heads;
  if (total_heads <= 0 || args.steps < 0) return "";
  plan::DeviceLimits lim;
  std::string err = device_limits(&lim);
  if (!err.empty()) return err;
  plan::Problem pb;
  pb.layers = args.layers;
  pb.heads = args.heads;
  pb.n = args.n;
  pb.d = args.d;
  pb.r = args.r;
  pb.basis = args.basis;

  plan::Planned planned;
  if (shape >= 0) {
    plan::Plan pl;
    err = plan::plan_shape(pb, lim, shape, &pl);
    if (!err.empty()) return err;
    planned.plans.push_back(pl);
  } else {
    planned = plan::plan_launch(pb, lim);
    if (planned.plans.empty()) return planned.reason;
  }

  // Dynamic + static shared memory must stay within the opt-in limit: allow exactly the budget. (Setting the
  // whole budget once, rather than each plan's bytes, also keeps concurrent callers from lowering it under
  // each other.)
  const cudaError_t cerr = cudaFuncSetAttribute(fit_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(lim.smem_optin - lim.static_smem));
  if (cerr != cudaSuccess) {
    cudaGetLastError();
    return cuda_error("cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", cerr);
  }

  std::string refusals;
  for (const plan::Plan& pl : planned.plans) {
    long long launched = 0;
    const std::string why = launch_plan(args, pl, stream, &launched);
    if (why.empty()) {
      g_last_shape.store(pl.shape_id);
      return "";
    }
    // A refused first launch ran nothing: the next shape may still run. A later launch's failure would leave
    // some heads advanced and others not, so it is an error.
    if (launched > 0 || shape >= 0) return "launch shape " + std::to_string(pl.shape_id) + ": " + why;
    refusals += (refusals.empty() ? "" : "; ") + ("launch shape " + std::to_string(pl.shape_id) + ": " + why);
  }
  return "no launch shape could be launched: " + refusals;
}

int last_launch_shape() { return g_last_shape.load(); }

}  // namespace cuda
}  // namespace impulse_fit
