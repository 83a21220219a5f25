// Host side of the CUDA fit: picks a launch shape for the device and launches the persistent kernel of
// fit_cuda_kernel.cuh (one launch runs every step of every head). No torch headers: nvcc compiles this file alone.
#include <cuda_runtime.h>

#include <string>

#include "fit_cuda.h"
#include "fit_cuda_kernel.cuh"

namespace impulse_fit {
namespace cuda {
namespace {

std::string cuda_error(const char* what, cudaError_t err) {
  return std::string(what) + ": " + cudaGetErrorString(err);
}

}  // namespace

std::string launch_fit(const FitArgs& args, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const long long total_heads = static_cast<long long>(args.layers) * args.heads;
  if (total_heads <= 0 || args.steps < 0) return "";
  if (total_heads > 65535)
    return "targets: " + std::to_string(total_heads) + " heads in one call exceed the CUDA grid limit of 65535";
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return cuda_error("cudaGetDevice", err);
  cudaDeviceProp prop;
  err = cudaGetDeviceProperties(&prop, dev);
  if (err != cudaSuccess) return cuda_error("cudaGetDeviceProperties", err);
  const size_t max_smem = prop.sharedMemPerBlockOptin;

  struct Candidate {
    int cl;
    bool state_in_smem;
  };
  Candidate cands[6];
  int ncand = 0;
  if (prop.major >= 9) {
    cands[ncand++] = {8, true};
    cands[ncand++] = {4, true};
    cands[ncand++] = {8, false};
  }
  cands[ncand++] = {1, true};
  cands[ncand++] = {1, false};

  err = cudaFuncSetAttribute(fit_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(max_smem));
  if (err != cudaSuccess) return cuda_error("cudaFuncSetAttribute", err);

  size_t smallest = 0;
  for (int ci = 0; ci < ncand; ++ci) {
    const Candidate cand = cands[ci];
    Params prm;
    prm.args = args;
    prm.cl = cand.cl;
    prm.state_in_smem = cand.state_in_smem;
    prm.lay = make_layout(args.n, args.d, args.r, args.k, cand.cl, cand.state_in_smem);
    const size_t bytes = static_cast<size_t>(prm.lay.total) * sizeof(float);
    if (smallest == 0 || bytes < smallest) smallest = bytes;
    if (bytes > max_smem) continue;
    const dim3 grid(cand.cl, static_cast<unsigned>(total_heads));
    if (cand.cl > 1) {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = grid;
      cfg.blockDim = dim3(kThreads);
      cfg.dynamicSmemBytes = bytes;
      cfg.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = cand.cl;
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, fit_kernel, &cfg) != cudaSuccess || clusters < 1) {
        cudaGetLastError();  // clear the (non-sticky) error of a refused query, try the next shape
        continue;
      }
      err = cudaLaunchKernelEx(&cfg, fit_kernel, prm);
    } else {
      fit_kernel<<<grid, kThreads, bytes, stream>>>(prm);
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) return cuda_error("fit kernel launch", err);
    return "";
  }
  return "problem too large for the CUDA fit: it needs " + std::to_string(smallest) +
         " bytes of shared memory per block, the device allows " + std::to_string(max_smem) +
         " (reduce the number of tokens N or the basis size k)";
}

}  // namespace cuda
}  // namespace impulse_fit
