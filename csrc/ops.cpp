// impulse_attn._C: the fused impulse fit registered with the PyTorch dispatcher.
//
//   impulse_attn::fit_iterative  runs `steps` Adam steps of the published recipe for every head, from a given
//                                state (Q, K, moments), returns the new state and each head's loss
//   impulse_attn::fit_gradients  one forward/backward: d loss / d Q, K and the loss (parity tests)
//
// Both take the pseudo-input in factored form X = A·B (A: N×basis, B: basis×D; impulse_attn/fitting/reduced.py's
// factor_basis builds it from an SVD). CPU kernels (float32, float64) run heads in parallel with at::parallel_for;
// the CUDA kernel (float32) is compiled in when the extension is built with nvcc (WITH_CUDA). Fake (meta)
// implementations are registered from Python (impulse_attn/fitting/compiled.py) with torch.library.register_fake.
// Every argument is validated here, once, with TORCH_CHECK, before any kernel runs.
//
// Both ops take an optional trailing `plan` (default -1): the CUDA launch shape to force (fit_plan.h's kShapes;
// -1 lets the planner choose). The CPU ops check it and ignore it.
//
// The module also exposes the launch planner (fit_plan.h) to Python: impulse_attn._C.launch_shapes(),
// plan_launch(...), and on CUDA builds cuda_launch_limits() and cuda_last_launch_shape().
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <string>
#include <tuple>

#include "fit_constants.h"
#include "fit_cpu.h"
#include "fit_math.h"
#include "fit_plan.h"

#if defined(WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "fit_cuda.h"
#endif

namespace impulse_fit {
namespace {

using at::Tensor;

constexpr int64_t kMaxDim = 1 << 16;  // keeps every index product of the kernels inside 64-bit, and int per head

void check_tensor(const Tensor& t, const char* name, int64_t dim, const Tensor& like) {
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(), " (like q), got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), " (like q), got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

struct Shape {
  int64_t layers, heads, n, d, r, basis;
};

Shape check_problem(const Tensor& a, const Tensor& b, const Tensor& targets, const Tensor& q, const Tensor& k) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "q must be float32 or float64, got ", q.scalar_type());
  check_tensor(q, "q", 4, q);
  check_tensor(k, "k", 4, q);
  check_tensor(a, "a", 2, q);
  check_tensor(b, "b", 2, q);
  check_tensor(targets, "targets", 4, q);
  Shape s{q.size(0), q.size(1), a.size(0), q.size(2), q.size(3), a.size(1)};
  TORCH_CHECK(k.sizes() == q.sizes(), "k must have the shape of q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(b.size(0) == s.basis && b.size(1) == s.d, "b must have shape (basis, D) = (", s.basis, ", ", s.d,
              "), got ",
              b.sizes());
  TORCH_CHECK(targets.size(0) == s.layers && targets.size(1) == s.heads && targets.size(2) == s.n &&
                  targets.size(3) == s.n,
              "targets must have shape (layers, heads, N, N) = (", s.layers, ", ", s.heads, ", ", s.n, ", ", s.n,
              "), got ", targets.sizes());
  TORCH_CHECK(s.n >= 1 && s.d >= 1 && s.r >= 1 && s.basis >= 1, "every size must be >= 1: N=", s.n, " D=", s.d,
              " r=", s.r, " basis=", s.basis);
  TORCH_CHECK(s.n <= kMaxDim && s.d <= kMaxDim && s.r <= kMaxDim && s.basis <= kMaxDim, "sizes above ", kMaxDim,
              " are not supported: N=", s.n, " D=", s.d, " r=", s.r, " basis=", s.basis);
  return s;
}

void check_moment(const Tensor& t, const char* name, const Tensor& q) {
  check_tensor(t, name, 4, q);
  TORCH_CHECK(t.sizes() == q.sizes(), name, " must have the shape of q ", q.sizes(), ", got ", t.sizes());
}

void check_hyper(int64_t step0, int64_t steps, double lr, double scale, int64_t renorm_every, int64_t renorm_mode,
                 double beta1, double beta2, double eps) {
  TORCH_CHECK(step0 >= 0, "step0 must be >= 0, got ", step0);
  TORCH_CHECK(steps >= 0, "steps must be >= 0, got ", steps);
  TORCH_CHECK(std::isfinite(lr) && lr > 0, "lr must be a finite number > 0, got ", lr);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale must be a finite number > 0, got ", scale);
  TORCH_CHECK(renorm_every >= 0 && renorm_every <= std::numeric_limits<int>::max(),
              "renorm_every must be in [0, 2**31 - 1] (0: no renormalization), got ", renorm_every);
  TORCH_CHECK(renorm_mode >= kRenormCode && renorm_mode <= kRenormNone,
              "renorm_mode must be 0 (code), 1 (columns) or 2 (none), got ", renorm_mode);
  TORCH_CHECK(beta1 >= 0 && beta1 < 1, "beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK(beta2 >= 0 && beta2 < 1, "beta2 must be in [0, 1), got ", beta2);
  TORCH_CHECK(std::isfinite(eps) && eps > 0, "eps must be a finite number > 0, got ", eps);
}

void check_plan(int64_t plan) {
  TORCH_CHECK(plan >= kPlanBest && plan < plan::kNumShapes, "plan must be ", kPlanBest,
              " (the planner's choice) or a launch shape from 0 to ", plan::kNumShapes - 1, ", got ", plan);
}

int64_t resolve_loss_heads(int64_t loss_heads, int64_t heads) {
  TORCH_CHECK(loss_heads >= 0, "loss_heads must be >= 0 (0: the number of heads), got ", loss_heads);
  return loss_heads == 0 ? heads : loss_heads;
}

using FitOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// The Adam moments and the renormalization targets of an iterative fit (both devices).
void check_state(const Shape& s, const Tensor& q, const Tensor& mq, const Tensor& vq, const Tensor& mk,
                 const Tensor& vk, const Tensor& norm0) {
  check_moment(mq, "exp_avg_q", q);
  check_moment(vq, "exp_avg_sq_q", q);
  check_moment(mk, "exp_avg_k", q);
  check_moment(vk, "exp_avg_sq_k", q);
  check_tensor(norm0, "norm0", 1, q);
  TORCH_CHECK(norm0.size(0) == s.layers, "norm0 must have shape (layers,) = (", s.layers, ",), got ", norm0.sizes());
}

// body(h) for every head h in [0, total), in parallel: heads never synchronize, and each keeps its working set in
// its core's cache.
template <class F>
void for_each_head(int64_t total, F&& body) {
  at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) body(h);
  });
}

// The sizes and shared inputs of one head's CPU problem (both ops).
template <class T>
cpu::HeadProblem<T> head_problem(const Shape& s, int64_t loss_heads, const Tensor& a, const Tensor& b,
                                 const Tensor& targets, int64_t h) {
  cpu::HeadProblem<T> pr;
  pr.n = static_cast<int>(s.n);
  pr.d = static_cast<int>(s.d);
  pr.r = static_cast<int>(s.r);
  pr.basis = static_cast<int>(s.basis);
  pr.heads = static_cast<int>(loss_heads);
  pr.a = a.const_data_ptr<T>();
  pr.b = b.const_data_ptr<T>();
  pr.target = targets.const_data_ptr<T>() + h * s.n * s.n;
  return pr;
}

FitOut fit_iterative_cpu(const Tensor& a, const Tensor& b, const Tensor& targets, const Tensor& q, const Tensor& k,
                         const Tensor& mq, const Tensor& vq, const Tensor& mk, const Tensor& vk, const Tensor& norm0,
                         int64_t step0, int64_t steps, double lr, double scale, int64_t renorm_every,
                         int64_t renorm_mode, double beta1, double beta2, double eps, int64_t loss_heads,
                         int64_t plan) {
  const Shape s = check_problem(a, b, targets, q, k);
  check_state(s, q, mq, vq, mk, vk, norm0);
  check_hyper(step0, steps, lr, scale, renorm_every, renorm_mode, beta1, beta2, eps);
  check_plan(plan);  // a CUDA launch shape: nothing to choose on the CPU
  const int64_t lh = resolve_loss_heads(loss_heads, s.heads);

  Tensor q_out = q.clone(), k_out = k.clone(), mq_out = mq.clone(), vq_out = vq.clone(), mk_out = mk.clone(),
         vk_out = vk.clone();
  Tensor loss = at::zeros({s.layers, s.heads}, q.options());
  const int64_t dr = s.d * s.r;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "impulse_attn::fit_iterative", [&] {
    const scalar_t* pn = norm0.const_data_ptr<scalar_t>();
    scalar_t* pq = q_out.mutable_data_ptr<scalar_t>();
    scalar_t* pk = k_out.mutable_data_ptr<scalar_t>();
    scalar_t* pmq = mq_out.mutable_data_ptr<scalar_t>();
    scalar_t* pvq = vq_out.mutable_data_ptr<scalar_t>();
    scalar_t* pmk = mk_out.mutable_data_ptr<scalar_t>();
    scalar_t* pvk = vk_out.mutable_data_ptr<scalar_t>();
    scalar_t* pl = loss.mutable_data_ptr<scalar_t>();
    for_each_head(s.layers * s.heads, [&](int64_t h) {
        cpu::HeadProblem<scalar_t> pr = head_problem<scalar_t>(s, lh, a, b, targets, h);
        pr.q = pq + h * dr;
        pr.kk = pk + h * dr;
        pr.mq = pmq + h * dr;
        pr.vq = pvq + h * dr;
        pr.mk = pmk + h * dr;
        pr.vk = pvk + h * dr;
        pr.norm0 = pn[h / s.heads];
        pr.scale = static_cast<scalar_t>(scale);
        pr.step0 = step0;
        pr.steps = steps;
        pr.renorm_every = static_cast<int>(renorm_every);
        pr.renorm_mode = static_cast<int>(renorm_mode);
        pr.adam = AdamHyper{lr, beta1, beta2, eps};
        pr.loss = pl + h;
        cpu::fit_head(pr);
    });
  });
  return {q_out, k_out, mq_out, vq_out, mk_out, vk_out, loss};
}

std::tuple<Tensor, Tensor, Tensor> fit_gradients_cpu(const Tensor& a, const Tensor& b, const Tensor& targets,
                                                     const Tensor& q, const Tensor& k, double scale,
                                                     int64_t loss_heads, int64_t plan) {
  const Shape s = check_problem(a, b, targets, q, k);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale must be a finite number > 0, got ", scale);
  check_plan(plan);
  const int64_t lh = resolve_loss_heads(loss_heads, s.heads);
  Tensor dq = at::empty_like(q), dk = at::empty_like(k);
  Tensor loss = at::zeros({s.layers, s.heads}, q.options());
  const int64_t dr = s.d * s.r;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "impulse_attn::fit_gradients", [&] {
    const scalar_t* pq = q.const_data_ptr<scalar_t>();
    const scalar_t* pk = k.const_data_ptr<scalar_t>();
    scalar_t* pdq = dq.mutable_data_ptr<scalar_t>();
    scalar_t* pdk = dk.mutable_data_ptr<scalar_t>();
    scalar_t* pl = loss.mutable_data_ptr<scalar_t>();
    for_each_head(s.layers * s.heads, [&](int64_t h) {
        cpu::HeadProblem<scalar_t> pr = head_problem<scalar_t>(s, lh, a, b, targets, h);
        // head_gradients only reads q and kk.
        pr.q = const_cast<scalar_t*>(pq + h * dr);
        pr.kk = const_cast<scalar_t*>(pk + h * dr);
        pr.scale = static_cast<scalar_t>(scale);
        pr.loss = pl + h;
        cpu::fit_head_gradients(pr, pdq + h * dr, pdk + h * dr);
    });
  });
  return {dq, dk, loss};
}

#if defined(WITH_CUDA)
cuda::FitArgs cuda_args(const Tensor& a, const Tensor& at_, const Tensor& b, const Tensor& targets, const Shape& s,
                        double scale, int64_t loss_heads) {
  cuda::FitArgs args;
  args.layers = static_cast<int>(s.layers);
  args.heads = static_cast<int>(s.heads);
  args.loss_heads = static_cast<int>(loss_heads);
  args.n = static_cast<int>(s.n);
  args.d = static_cast<int>(s.d);
  args.r = static_cast<int>(s.r);
  args.basis = static_cast<int>(s.basis);
  args.a = a.const_data_ptr<float>();
  args.at = at_.const_data_ptr<float>();
  args.b = b.const_data_ptr<float>();
  args.targets = targets.const_data_ptr<float>();
  args.scale = static_cast<float>(scale);
  return args;
}

void check_cuda_problem(const Tensor& q) {
  TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor for the CUDA kernel");
  TORCH_CHECK(q.scalar_type() == at::kFloat, "the CUDA fit runs in float32; q has dtype ", q.scalar_type());
}

FitOut fit_iterative_cuda(const Tensor& a, const Tensor& b, const Tensor& targets, const Tensor& q,
                          const Tensor& k, const Tensor& mq, const Tensor& vq, const Tensor& mk, const Tensor& vk,
                          const Tensor& norm0, int64_t step0, int64_t steps, double lr, double scale,
                          int64_t renorm_every, int64_t renorm_mode, double beta1, double beta2, double eps,
                          int64_t loss_heads, int64_t plan) {
  check_cuda_problem(q);
  const Shape s = check_problem(a, b, targets, q, k);
  check_state(s, q, mq, vq, mk, vk, norm0);
  check_hyper(step0, steps, lr, scale, renorm_every, renorm_mode, beta1, beta2, eps);
  check_plan(plan);
  const int64_t lh = resolve_loss_heads(loss_heads, s.heads);
  const c10::cuda::CUDAGuard guard(q.device());
  Tensor q_out = q.clone(), k_out = k.clone(), mq_out = mq.clone(), vq_out = vq.clone(), mk_out = mk.clone(),
         vk_out = vk.clone();
  Tensor loss = at::zeros({s.layers, s.heads}, q.options());
  const Tensor at_ = a.t().contiguous();
  cuda::FitArgs args = cuda_args(a, at_, b, targets, s, scale, lh);
  args.norm0 = norm0.const_data_ptr<float>();
  args.q = q_out.mutable_data_ptr<float>();
  args.kk = k_out.mutable_data_ptr<float>();
  args.mq = mq_out.mutable_data_ptr<float>();
  args.vq = vq_out.mutable_data_ptr<float>();
  args.mk = mk_out.mutable_data_ptr<float>();
  args.vk = vk_out.mutable_data_ptr<float>();
  args.loss = loss.mutable_data_ptr<float>();
  args.step0 = step0;
  args.steps = steps;
  args.renorm_every = static_cast<int>(renorm_every);
  args.renorm_mode = static_cast<int>(renorm_mode);
  args.adam = AdamHyper{lr, beta1, beta2, eps};
  const std::string err =
      cuda::launch_fit(args, c10::cuda::getCurrentCUDAStream().stream(), static_cast<int>(plan));
  TORCH_CHECK(err.empty(), err);
  return {q_out, k_out, mq_out, vq_out, mk_out, vk_out, loss};
}

std::tuple<Tensor, Tensor, Tensor> fit_gradients_cuda(const Tensor& a, const Tensor& b, const Tensor& targets,
                                                      const Tensor& q, const Tensor& k, double scale,
                                                      int64_t loss_heads, int64_t plan) {
  check_cuda_problem(q);
  const Shape s = check_problem(a, b, targets, q, k);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale must be a finite number > 0, got ", scale);
  check_plan(plan);
  const int64_t lh = resolve_loss_heads(loss_heads, s.heads);
  const c10::cuda::CUDAGuard guard(q.device());
  // Gradient mode reads the state and writes only the gradients and the loss; the scratch copies keep the
  // inputs untouched.
  Tensor q_work = q.clone(), k_work = k.clone(), zeros = at::zeros_like(q);
  Tensor dq = at::empty_like(q), dk = at::empty_like(k);
  Tensor loss = at::zeros({s.layers, s.heads}, q.options());
  Tensor norm0 = at::ones({s.layers}, q.options());
  const Tensor at_ = a.t().contiguous();
  cuda::FitArgs args = cuda_args(a, at_, b, targets, s, scale, lh);
  args.norm0 = norm0.const_data_ptr<float>();
  args.q = q_work.mutable_data_ptr<float>();
  args.kk = k_work.mutable_data_ptr<float>();
  args.mq = args.vq = args.mk = args.vk = zeros.mutable_data_ptr<float>();
  args.loss = loss.mutable_data_ptr<float>();
  args.grad_q = dq.mutable_data_ptr<float>();
  args.grad_k = dk.mutable_data_ptr<float>();
  args.steps = 1;
  const std::string err =
      cuda::launch_fit(args, c10::cuda::getCurrentCUDAStream().stream(), static_cast<int>(plan));
  TORCH_CHECK(err.empty(), err);
  return {dq, dk, loss};
}
#endif

}  // namespace
}  // namespace impulse_fit

// The schema's defaults are spelled by fit_constants.h's macros, the same tokens as the constants the C++ code
// uses; the asserts pin the values the Python side (fitting.reduced.ADAM_BETAS, ADAM_EPS) relies on.
static_assert(impulse_fit::kAdamBeta1 == 0.9 && impulse_fit::kAdamBeta2 == 0.999 && impulse_fit::kAdamEps == 1e-8,
              "Adam defaults changed: update the schema consumers (fitting/compiled.py's fakes, reduced.ADAM_BETAS)");
static_assert(impulse_fit::kPlanBest == -1 && impulse_fit::kLossHeadsDefault == 0, "schema defaults changed");

TORCH_LIBRARY(impulse_attn, m) {
  m.def(
      "fit_iterative(Tensor a, Tensor b, Tensor targets, Tensor q, Tensor k, Tensor exp_avg_q, "
      "Tensor exp_avg_sq_q, Tensor exp_avg_k, Tensor exp_avg_sq_k, Tensor norm0, int step0, int steps, float lr, "
      "float scale, int renorm_every, int renorm_mode, "
      "float beta1=" IMPULSE_FIT_STR(IMPULSE_FIT_ADAM_BETA1) ", "
      "float beta2=" IMPULSE_FIT_STR(IMPULSE_FIT_ADAM_BETA2) ", "
      "float eps=" IMPULSE_FIT_STR(IMPULSE_FIT_ADAM_EPS) ", "
      "int loss_heads=" IMPULSE_FIT_STR(IMPULSE_FIT_LOSS_HEADS_DEFAULT) ", "
      "int plan=" IMPULSE_FIT_STR(IMPULSE_FIT_PLAN_BEST) ") "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fit_gradients(Tensor a, Tensor b, Tensor targets, Tensor q, Tensor k, float scale, "
      "int loss_heads=" IMPULSE_FIT_STR(IMPULSE_FIT_LOSS_HEADS_DEFAULT) ", "
      "int plan=" IMPULSE_FIT_STR(IMPULSE_FIT_PLAN_BEST) ") -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(impulse_attn, CPU, m) {
  m.impl("fit_iterative", &impulse_fit::fit_iterative_cpu);
  m.impl("fit_gradients", &impulse_fit::fit_gradients_cpu);
}

#if defined(WITH_CUDA)
TORCH_LIBRARY_IMPL(impulse_attn, CUDA, m) {
  m.impl("fit_iterative", &impulse_fit::fit_iterative_cuda);
  m.impl("fit_gradients", &impulse_fit::fit_gradients_cuda);
}
#endif

// A plain Python module: importing impulse_attn._C loads this library, which registers the ops above.
namespace {

PyObject* has_cuda(PyObject*, PyObject*) {
#if defined(WITH_CUDA)
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(impulse_fit::cpu::instruction_set()); }

namespace plan = impulse_fit::plan;

const char* place(bool shared) { return shared ? "shared" : "global"; }

PyObject* shape_dict(int id) {
  const plan::Shape& s = plan::kShapes[id];
  return Py_BuildValue("{s:i,s:i,s:s,s:s,s:O,s:s}", "shape", id, "cluster", s.cluster, "state",
                       place(s.state_shared), "b", place(s.b_shared), "tiled", s.tiled ? Py_True : Py_False,
                       "description", plan::describe(s).c_str());
}

PyObject* launch_shapes(PyObject*, PyObject*) {
  PyObject* out = PyList_New(plan::kNumShapes);
  if (out == nullptr) return nullptr;
  for (int id = 0; id < plan::kNumShapes; ++id) {
    PyObject* d = shape_dict(id);
    if (d == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyList_SET_ITEM(out, id, d);
  }
  return out;
}

PyObject* plan_dict(const plan::Plan& p) {
  const plan::Layout& l = p.layout;
  PyObject* layout = Py_BuildValue(
      "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "state", l.state, "bs", l.bs,
      "bqp", l.bqp, "bkp", l.bkp, "bq", l.bq, "bk", l.bk, "core", l.core, "u", l.u, "w", l.w, "cp", l.cp, "c", l.c,
      "dbq", l.dbq, "dbk", l.dbk, "colp", l.colp, "colf", l.colf, "rowbuf", l.rowbuf, "lossp", l.lossp, "total",
      l.total);
  if (layout == nullptr) return nullptr;
  return Py_BuildValue("{s:i,s:i,s:s,s:s,s:O,s:i,s:i,s:i,s:L,s:L,s:L,s:s,s:N}", "shape", p.shape_id, "cluster",
                       p.shape.cluster, "state", place(p.shape.state_shared), "b", place(p.shape.b_shared), "tiled",
                       p.shape.tiled ? Py_True : Py_False, "tile_rows", p.tile_rows, "rows_per_block",
                       p.rows_per_block, "cols_per_block", p.cols_per_block, "dynamic_bytes", p.dynamic_bytes,
                       "heads_per_launch", p.heads_per_launch, "launches", p.launches, "description",
                       plan::describe(p.shape).c_str(), "layout", layout);
}

PyObject* plan_launch(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"layers",     "heads",       "n",          "d",          "r",
                                 "basis",      "cc_major",    "cc_minor",   "smem_optin", "static_smem",
                                 "code_version", "max_grid_y", "cluster_launch", "shape",  "max_tile_rows",
                                 nullptr};
  plan::Problem pb;
  plan::DeviceLimits dev;
  PyObject* cluster = Py_None;
  int shape = impulse_fit::kPlanBest, max_tile_rows = plan::kDefaultMaxTileRows;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLLLLiiLLi|LOii", const_cast<char**>(kwlist), &pb.layers,
                                   &pb.heads, &pb.n, &pb.d, &pb.r, &pb.basis, &dev.cc_major, &dev.cc_minor,
                                   &dev.smem_optin, &dev.static_smem, &dev.code_version, &dev.max_grid_y, &cluster,
                                   &shape, &max_tile_rows))
    return nullptr;
  // cluster_launch defaults to what every CUDA device of compute capability 9.0 or newer reports.
  dev.cluster_launch = cluster == Py_None ? dev.cc_major >= 9 : PyObject_IsTrue(cluster) == 1;
  plan::Planned res;
  if (shape >= 0 || shape < impulse_fit::kPlanBest) {
    plan::Plan pl;
    res.reason = plan::plan_shape(pb, dev, shape, &pl, max_tile_rows);
    if (res.reason.empty()) res.plans.push_back(pl);
  } else {
    res = plan::plan_launch(pb, dev, max_tile_rows);
  }
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(res.plans.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < res.plans.size(); ++i) {
    PyObject* d = plan_dict(res.plans[i]);
    if (d == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), d);
  }
  return Py_BuildValue("{s:N,s:s}", "plans", list, "reason", res.reason.c_str());
}

PyObject* cuda_launch_limits(PyObject*, PyObject*) {
#if defined(WITH_CUDA)
  plan::DeviceLimits dev;
  const std::string err = impulse_fit::cuda::device_limits(&dev);
  if (!err.empty()) {
    PyErr_SetString(PyExc_RuntimeError, err.c_str());
    return nullptr;
  }
  return Py_BuildValue("{s:i,s:i,s:L,s:L,s:i,s:L,s:O}", "cc_major", dev.cc_major, "cc_minor", dev.cc_minor,
                       "smem_optin", dev.smem_optin, "static_smem", dev.static_smem, "code_version",
                       dev.code_version, "max_grid_y", dev.max_grid_y, "cluster_launch",
                       dev.cluster_launch ? Py_True : Py_False);
#else
  PyErr_SetString(PyExc_RuntimeError, "impulse_attn._C was built without CUDA sources");
  return nullptr;
#endif
}

PyObject* cuda_last_launch_shape(PyObject*, PyObject*) {
#if defined(WITH_CUDA)
  return PyLong_FromLong(impulse_fit::cuda::last_launch_shape());
#else
  return PyLong_FromLong(-1);
#endif
}

PyMethodDef methods[] = {
    {"has_cuda", has_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled into this build."},
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "The instruction set the CPU kernels use on this machine (avx512, avx2 or base; IMPULSE_ATTN_CPU_ISA lowers "
     "it)."},
    {"launch_shapes", launch_shapes, METH_NOARGS,
     "Every launch shape of the CUDA fit, in the planner's order of preference (the op's `plan` argument forces "
     "one by its number)."},
    {"plan_launch", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(plan_launch)),
     METH_VARARGS | METH_KEYWORDS,
     "plan_launch(layers, heads, n, d, r, basis, cc_major, cc_minor, smem_optin, static_smem, code_version, "
     "max_grid_y=65535, cluster_launch=None, shape=-1, max_tile_rows=64) -> {'plans': [...], 'reason': str}: "
     "the CUDA fit's launch planner (csrc/fit_plan.h) for a problem and a device's limits, without a GPU. "
     "shape=-1: every feasible launch shape in order of preference; shape>=0: that shape only."},
    {"cuda_launch_limits", cuda_launch_limits, METH_NOARGS,
     "The limits the CUDA launcher reads for the current device and the loaded kernel (the planner's input)."},
    {"cuda_last_launch_shape", cuda_last_launch_shape, METH_NOARGS,
     "The launch shape of the last successful CUDA fit launch in this process (-1 before any)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "Compiled impulse fit (ops under torch.ops.impulse_attn).",
                          -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
