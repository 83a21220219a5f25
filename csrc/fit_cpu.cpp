// Instantiates the CPU twin (fit_cpu.h) once per instruction set and picks the widest one this CPU has at run
// time, so one build runs everywhere and uses AVX-512 where it exists. No torch headers: this translation unit
// compiles in seconds.
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "fit_cpu.h"

namespace impulse_fit {
namespace cpu {
namespace {

#if defined(__x86_64__) && defined(__GNUC__)
#define FIT_X86 1
#define TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")))
#define TARGET_AVX2 __attribute__((target("avx2,fma")))

TARGET_AVX512 void head_avx512(const HeadProblem<float>& pb) { run_head<float, ArchAvx512>(pb); }
TARGET_AVX512 void head_avx512(const HeadProblem<double>& pb) { run_head<double, ArchAvx512>(pb); }
TARGET_AVX2 void head_avx2(const HeadProblem<float>& pb) { run_head<float, ArchAvx2>(pb); }
TARGET_AVX2 void head_avx2(const HeadProblem<double>& pb) { run_head<double, ArchAvx2>(pb); }
TARGET_AVX512 void grads_avx512(const HeadProblem<float>& pb, float* dq, float* dk) {
  head_gradients<float, ArchAvx512>(pb, dq, dk);
}
TARGET_AVX512 void grads_avx512(const HeadProblem<double>& pb, double* dq, double* dk) {
  head_gradients<double, ArchAvx512>(pb, dq, dk);
}
TARGET_AVX2 void grads_avx2(const HeadProblem<float>& pb, float* dq, float* dk) {
  head_gradients<float, ArchAvx2>(pb, dq, dk);
}
TARGET_AVX2 void grads_avx2(const HeadProblem<double>& pb, double* dq, double* dk) {
  head_gradients<double, ArchAvx2>(pb, dq, dk);
}
#endif

void head_base(const HeadProblem<float>& pb) { run_head<float, ArchBase>(pb); }
void head_base(const HeadProblem<double>& pb) { run_head<double, ArchBase>(pb); }
void grads_base(const HeadProblem<float>& pb, float* dq, float* dk) { head_gradients<float, ArchBase>(pb, dq, dk); }
void grads_base(const HeadProblem<double>& pb, double* dq, double* dk) {
  head_gradients<double, ArchBase>(pb, dq, dk);
}

enum class Isa { base, avx2, avx512 };

// The widest instruction set of this CPU, lowered by IMPULSE_ATTN_CPU_ISA=avx2|base (the tests run every path
// on a machine that has them all). Read on every call: it costs nothing next to a fit.
Isa isa() {
#if defined(FIT_X86)
  Isa best = Isa::base;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
  if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    best = Isa::avx512;
  const char* cap = std::getenv("IMPULSE_ATTN_CPU_ISA");
  if (cap != nullptr) {
    if (std::strcmp(cap, "base") == 0) return Isa::base;
    if (std::strcmp(cap, "avx2") == 0 && best == Isa::avx512) return Isa::avx2;
  }
  return best;
#else
  return Isa::base;
#endif
}

// Flush-to-zero and denormals-are-zero for the calling thread while a head runs, restored after. A sharp fit
// spreads a row's logits over more than 44 units, so e² in the softmax statistics falls below float's normal
// range; x86 handles such denormals in microcode (measured: the softmax pass 2.4x slower). Flushing them changes
// values below 1.2e-38 only.
struct FlushDenormals {
#if defined(__x86_64__) || defined(__i386__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

template <class T>
void dispatch_head(const HeadProblem<T>& pb) {
  const FlushDenormals ftz;
  switch (isa()) {
#if defined(FIT_X86)
    case Isa::avx512: head_avx512(pb); return;
    case Isa::avx2: head_avx2(pb); return;
#endif
    default: head_base(pb); return;
  }
}

template <class T>
void dispatch_grads(const HeadProblem<T>& pb, T* dq, T* dk) {
  const FlushDenormals ftz;
  switch (isa()) {
#if defined(FIT_X86)
    case Isa::avx512: grads_avx512(pb, dq, dk); return;
    case Isa::avx2: grads_avx2(pb, dq, dk); return;
#endif
    default: grads_base(pb, dq, dk); return;
  }
}

}  // namespace

void fit_head(const HeadProblem<float>& pb) { dispatch_head(pb); }
void fit_head(const HeadProblem<double>& pb) { dispatch_head(pb); }
void fit_head_gradients(const HeadProblem<float>& pb, float* dq, float* dk) { dispatch_grads(pb, dq, dk); }
void fit_head_gradients(const HeadProblem<double>& pb, double* dq, double* dk) { dispatch_grads(pb, dq, dk); }

const char* instruction_set() {
  switch (isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "base";
  }
}

}  // namespace cpu
}  // namespace impulse_fit
