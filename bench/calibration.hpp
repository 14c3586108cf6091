// The machine's measured fp32 FMA peak, the yardstick of every peak_fraction counter, and
// the shared ways of timing an entry.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <functional>

namespace bench {

/// GFLOP/s of one thread running independent fp32 FMA chains (measured once per process).
double fma_peak_gflops();

/// Bytes of heap that `run` holds at its peak beyond what was live before it (counted by a
/// replaced operator new).
long long heap_peak(const std::function<void()>& run);

/// Adds tokens_per_second, gflops and peak_fraction (of `threads` x the calibrated peak).
void set_throughput_counters(benchmark::State& state, double tokens, double flop, int threads);

/// Runs `baseline`, then `measured`, once per iteration of an entry registered with
/// `UseManualTime`: the iteration's time is `measured`'s alone. Returns the baseline's total
/// time over the measured one's: a ratio from the two interleaved, so that a shared machine's
/// slow phases hit both alike (entries run seconds apart can differ by 10-30 %).
template <class Baseline, class Measured>
double interleaved(benchmark::State& state, Baseline&& baseline, Measured&& measured) {
  using clock = std::chrono::steady_clock;
  double baseline_seconds = 0, measured_seconds = 0;
  for (auto _ : state) {
    const auto t0 = clock::now();
    baseline();
    benchmark::ClobberMemory();
    const auto t1 = clock::now();
    measured();
    benchmark::ClobberMemory();
    const auto t2 = clock::now();
    baseline_seconds += std::chrono::duration<double>(t1 - t0).count();
    measured_seconds += std::chrono::duration<double>(t2 - t1).count();
    state.SetIterationTime(std::chrono::duration<double>(t2 - t1).count());
  }
  return baseline_seconds / measured_seconds;
}

/// Real time for a plain entry, manual time for one that runs `interleaved`.
inline benchmark::internal::Benchmark* timed(benchmark::internal::Benchmark* b, bool runs_interleaved) {
  return runs_interleaved ? b->UseManualTime() : b->UseRealTime();
}

}  // namespace bench
