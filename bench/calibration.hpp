// The machine's measured fp32 FMA peak, the yardstick of every peak_fraction counter.
#pragma once

#include <benchmark/benchmark.h>

#include <functional>

namespace bench {

/// GFLOP/s of one thread running independent fp32 FMA chains (measured once per process).
double fma_peak_gflops();

/// Bytes of heap that `run` holds at its peak beyond what was live before it (counted by a
/// replaced operator new).
long long heap_peak(const std::function<void()>& run);

/// Adds tokens_per_second, gflops and peak_fraction (of `threads` x the calibrated peak).
void set_throughput_counters(benchmark::State& state, double tokens, double flop, int threads);

}  // namespace bench
