// WKV-7 op benchmarks: every backend, static and dynamic head size, 1 and 2 threads.
#include <metastate/metastate.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "calibration.hpp"

namespace ms = metastate;

namespace {

/// RWKV-7-shaped random inputs for one [1,T,H,N] sequence, held as float.
struct workload {
  int T, H, N;
  std::vector<float> r, w, k, v, a, b, y, state;
  workload(int tokens, int heads, int n) : T(tokens), H(heads), N(n) {
    const std::size_t size = std::size_t(T) * H * N;
    std::mt19937 gen(42);
    std::uniform_real_distribution<float> uni(-1.f, 1.f);
    for (auto* x : {&r, &w, &k, &v, &a, &b, &y}) x->resize(size);
    for (std::size_t i = 0; i < size; ++i) {
      r[i] = uni(gen), k[i] = uni(gen), v[i] = uni(gen);
      w[i] = std::exp(-0.6f / (1.f + std::exp(-uni(gen))));
    }
    for (std::size_t head = 0; head < size / N; ++head) {  // a = -κ̂, b = κ̂ α with unit κ̂
      float norm = 0;
      for (int j = 0; j < N; ++j) norm += (a[head * N + j] = uni(gen)) * a[head * N + j];
      for (int j = 0; j < N; ++j) {
        a[head * N + j] /= -std::sqrt(norm);
        b[head * N + j] = -a[head * N + j] * 0.5f * (1.f + uni(gen));
      }
    }
    state.assign(std::size_t(H) * N * N, 0.01f);
  }
  ms::sequence_view<const float> view(const std::vector<float>& x, int tokens) const {
    return {x.data(), 1, tokens, H, N};
  }
  ms::wkv7::inputs<float> inputs(int tokens) const {
    return {view(r, tokens), view(w, tokens), view(k, tokens), view(v, tokens), view(a, tokens), view(b, tokens)};
  }
};

template <int N, class Backend>
void wkv7_sequence(benchmark::State& st, int H, int T, int threads) {
  workload x(T, H, 64);
  ms::wkv7::options opt;
  opt.exec.threads = threads;
  for (auto _ : st) {
    ms::wkv7::sequence<N, Backend>(x.inputs(T), ms::state_view<float>(x.state.data(), 1, H, 64),
                                   ms::sequence_view<float>(x.y.data(), 1, T, H, 64), opt);
    benchmark::ClobberMemory();
  }
  bench::set_throughput_counters(st, T, 8.0 * 64 * 64 * H * T, threads);
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
        benchmark::RegisterBenchmark(("wkv7_sequence/" + name + "/" + n + tail + "/T:4096" + th).c_str(), seq, H,
                                     4096, threads)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        benchmark::RegisterBenchmark(("wkv7_step/" + name + "/" + n + tail + th).c_str(), step, H, threads)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
}

const bool registered = [] {
  register_backend<ms::backend::scalar>("scalar");
  register_backend<ms::backend::eigen>("eigen");
  register_backend<ms::backend::simd<>>("simd");
  return true;
}();

}  // namespace
