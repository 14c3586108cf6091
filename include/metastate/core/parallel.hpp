// OpenMP policy: threads only at the outermost independent axis, never nested, compiled out cleanly.
#pragma once

#include <exception>
#include <string>

#include "metastate/core/config.hpp"
#include "metastate/core/error.hpp"
#if METASTATE_HAS_OPENMP
#include <omp.h>
#endif

namespace metastate {

/// How many threads a call may use: `0` means the OpenMP default (`OMP_NUM_THREADS`).
struct exec_policy {
  int threads = 0;
  /// The `cudaStream_t` the `cuda` backend launches on (null: the default stream). An opaque
  /// pointer so that host-only code never needs CUDA headers; CPU backends ignore it.
  void* stream = nullptr;
};

/// Throws value_error "<context>: exec.threads must be >= 0 ..." (no prefix for an empty context).
[[noreturn]] METASTATE_COLD inline void throw_negative_threads(const char* context, int threads) {
  throw value_error(std::string(context) + (*context ? ": " : "") +
                    "exec.threads must be >= 0 (0: OpenMP's default), got " + std::to_string(threads));
}

/// The thread count a call will run with: 1 without OpenMP or inside a parallel region.
inline int resolve_threads(const exec_policy& policy) {
  if (policy.threads < 0) throw_negative_threads("", policy.threads);
#if METASTATE_HAS_OPENMP
  if (omp_in_parallel()) return 1;
  return policy.threads > 0 ? policy.threads : omp_get_max_threads();
#else
  (void)policy;
  return 1;
#endif
}

/// Runs `work(thread)` for thread = 0 .. threads − 1, in one parallel region (none for one
/// thread: even a one-thread region costs about a microsecond). OpenMP may start fewer
/// threads than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC); those it starts then share the
/// missing ones' work, which would otherwise be left undone. An exception thrown by `work`
/// (an allocation that fails) is rethrown after the region, the first one if several are:
/// leaving a parallel region by an exception terminates the program.
template <class Work>
void run_threads(int threads, Work&& work) {
  if (threads == 1) {
    work(0);
    return;
  }
#if METASTATE_HAS_OPENMP
  std::exception_ptr failure;
#pragma omp parallel num_threads(threads)
  for (int thread = omp_get_thread_num(); thread < threads; thread += omp_get_num_threads()) {
    try {
      work(thread);
    } catch (...) {
#pragma omp critical(metastate_run_threads_failure)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
#else
  for (int thread = 0; thread < threads; ++thread) work(thread);
#endif
}

}  // namespace metastate
