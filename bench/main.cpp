// Benchmark main: the FMA-peak calibration and the shared counters.
#include <metastate/metastate.hpp>

#include <chrono>
#include <functional>

#include "calibration.hpp"
// The counting operator new behind bench::heap_peak (the allocation tests use it too).
#include "../tests/heap_counter.hpp"

namespace bench {
namespace {

using batch = xsimd::batch<float, metastate::backend::default_simd_arch>;
constexpr int chains = 12;  // enough independent FMAs in flight to cover latency x pipes

double fma_chains(long iterations) {
  batch acc[chains];
  for (int c = 0; c < chains; ++c) acc[c] = batch(1.0f + 1e-3f * c);
  const batch x(0.999999f), y(1e-7f);
  for (long i = 0; i < iterations; ++i)
    for (int c = 0; c < chains; ++c) acc[c] = xsimd::fma(acc[c], x, y);
  float sum = 0;
  for (int c = 0; c < chains; ++c) sum += xsimd::hadd(acc[c]);
  return sum;
}

double flop_of(long iterations) { return 2.0 * iterations * chains * batch::size; }

double measure_peak() {
  using clock = std::chrono::steady_clock;
  const long iterations = 20'000'000;
  double best = 0;
  for (int repeat = 0; repeat < 5; ++repeat) {  // best of 5: the machine is shared
    const auto t0 = clock::now();
    benchmark::DoNotOptimize(fma_chains(iterations));
    const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
    best = std::max(best, flop_of(iterations) / seconds / 1e9);
  }
  return best;
}

void calibration_fma_peak(benchmark::State& state) {
  const long iterations = 1'000'000;
  for (auto _ : state) benchmark::DoNotOptimize(fma_chains(iterations));
  state.counters["gflops"] = benchmark::Counter(flop_of(iterations) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["best_of_5_gflops"] = fma_peak_gflops();
}
BENCHMARK(calibration_fma_peak)->Name("calibration/fma_peak")->Unit(benchmark::kMillisecond);

}  // namespace

long long heap_peak(const std::function<void()>& run) {
  const long long start = heap_counter::restart_peak();
  run();
  return heap_counter::peak_bytes.load() - start;
}

double fma_peak_gflops() {
  static const double peak = measure_peak();
  return peak;
}

void set_throughput_counters(benchmark::State& state, double tokens, double flop, int threads) {
  using benchmark::Counter;
  state.counters["tokens_per_second"] = Counter(tokens, Counter::kIsIterationInvariantRate);
  state.counters["gflops"] = Counter(flop / 1e9, Counter::kIsIterationInvariantRate);
  state.counters["peak_fraction"] =
      Counter(flop / 1e9 / (fma_peak_gflops() * threads), Counter::kIsIterationInvariantRate);
}

}  // namespace bench

BENCHMARK_MAIN();
