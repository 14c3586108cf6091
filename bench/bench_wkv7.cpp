// WKV-7 op benchmarks: every backend, static and dynamic head size, 1 and 2 threads.
#include <metastate/metastate.hpp>

#include <string>

#include "calibration.hpp"
#include "workload.hpp"

namespace ms = metastate;

namespace {

using bench::workload;

/// Runs `call(threads)` once per iteration. With more than one thread the same call on one
/// thread runs before it in every iteration (`bench::interleaved`) and `speedup` reports the
/// one-thread time over the threads' time.
template <class Call>
void against_one_thread(benchmark::State& st, int threads, Call&& call) {
  if (threads > 1) {
    st.counters["speedup"] = bench::interleaved(st, [&] { call(1); }, [&] { call(threads); });
    return;
  }
  for (auto _ : st) {
    call(1);
    benchmark::ClobberMemory();
  }
}

template <int N, class Backend>
void wkv7_sequence(benchmark::State& st, int H, int T, int threads) {
  workload x(T, H, 64);
  against_one_thread(st, threads, [&](int use) {
    ms::wkv7::options opt;
    opt.exec.threads = use;
    ms::wkv7::sequence<N, Backend>(x.inputs(T), ms::state_view<float>(x.state.data(), 1, H, 64),
                                   ms::sequence_view<float>(x.y.data(), 1, T, H, 64), opt);
  });
  bench::set_throughput_counters(st, T, 8.0 * 64 * 64 * H * T, threads);
}

/// Two batch rows of one head: the two threads' inputs and outputs are separate blocks of
/// memory (beside B = 1, H = 2, where they share every token's rows).
void wkv7_sequence_two_rows(benchmark::State& st, int T, int threads) {
  workload x(2 * T, 1, 64);  // [1, 2T, 1, 64] read as [2, T, 1, 64]
  ms::aligned_vector<float> state(2 * 64 * 64, 0.01f);
  auto view = [&](const ms::aligned_vector<float>& v) { return ms::sequence_view<const float>(v.data(), 2, T, 1, 64); };
  against_one_thread(st, threads, [&](int use) {
    ms::wkv7::options opt;
    opt.exec.threads = use;
    ms::wkv7::sequence<64>({view(x.r), view(x.w), view(x.k), view(x.v), view(x.a), view(x.b)},
                           ms::state_view<float>(state.data(), 2, 1, 64),
                           ms::sequence_view<float>(x.y.data(), 2, T, 1, 64), opt);
  });
  bench::set_throughput_counters(st, 2.0 * T, 8.0 * 64 * 64 * 2 * T, threads);
}

template <int N, class Backend>
void wkv7_step(benchmark::State& st, int H, int threads) {
  workload x(1, H, 64);
  ms::wkv7::options opt;
  opt.exec.threads = threads;
  for (auto _ : st) {
    ms::wkv7::step<N, Backend>(x.inputs(1), ms::state_view<float>(x.state.data(), 1, H, 64),
                               ms::sequence_view<float>(x.y.data(), 1, 1, H, 64), opt);
    benchmark::ClobberMemory();
  }
  bench::set_throughput_counters(st, 1, 8.0 * 64 * 64 * H, threads);
}

template <class Backend>
void register_backend(const std::string& name) {
  for (bool is_static : {true, false})
    for (int H : {1, 12, 32})
      for (int threads : {1, 2}) {
        const std::string n = is_static ? "N:64" : "N:dyn64";
        const std::string tail = "/H:" + std::to_string(H) + "/B:1";
        const std::string th = "/threads:" + std::to_string(threads);
        auto seq = is_static ? wkv7_sequence<64, Backend> : wkv7_sequence<ms::dynamic, Backend>;
        auto step = is_static ? wkv7_step<64, Backend> : wkv7_step<ms::dynamic, Backend>;
        bench::timed(benchmark::RegisterBenchmark(("wkv7_sequence/" + name + "/" + n + tail + "/T:4096" + th).c_str(), seq,
                                           H, 4096, threads),
              threads > 1)
            ->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("wkv7_step/" + name + "/" + n + tail + th).c_str(), step, H, threads)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
}

const bool registered = [] {
  for (int threads : {1, 2})
    for (int H : {2})
      bench::timed(benchmark::RegisterBenchmark(("wkv7_sequence/simd/N:64/H:" + std::to_string(H) +
                                          "/B:1/T:4096/threads:" + std::to_string(threads))
                                             .c_str(),
                                         wkv7_sequence<64, ms::backend::simd<>>, H, 4096, threads),
            threads > 1)
          ->Unit(benchmark::kMillisecond);
  for (int threads : {1, 2})
    bench::timed(benchmark::RegisterBenchmark(
              ("wkv7_sequence/simd/N:64/H:1/B:2/T:4096/threads:" + std::to_string(threads)).c_str(),
              wkv7_sequence_two_rows, 4096, threads),
          threads > 1)
        ->Unit(benchmark::kMillisecond);
  register_backend<ms::backend::scalar>("scalar");
  register_backend<ms::backend::eigen>("eigen");
  register_backend<ms::backend::simd<>>("simd");
  return true;
}();

}  // namespace
