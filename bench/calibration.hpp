// The machine's measured fp32 FMA peak, the yardstick of every peak_fraction counter.
#pragma once

#include <benchmark/benchmark.h>

namespace bench {

/// GFLOP/s of one thread running independent fp32 FMA chains (measured once per process).
double fma_peak_gflops();

/// Adds tokens_per_second, gflops and peak_fraction (of `threads` x the calibrated peak).
void set_throughput_counters(benchmark::State& state, double tokens, double flop, int threads);

}  // namespace bench
