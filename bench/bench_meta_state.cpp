// Meta-State op benchmarks (encoder + evolution + readout), named and counted like the WKV-7
// ones so the two compare per token and head; and model-level prefill/decode of a Meta-State
// model beside the RWKV-7 model of the same size.
#include <metastate/metastate.hpp>

#include <string>

#include "calibration.hpp"
#include "workload.hpp"

namespace ms = metastate;

namespace {

using bench::workload;

/// A sequence chunk as the model runs it: the encoder replays the WKV recurrence from the
/// chunk-start state with x̃ as query, then the Meta-State recurrence runs with its readout.
template <int N, class Backend>
void meta_state_sequence(benchmark::State& st, int H, int T, int threads) {
  workload x(T, H, 64);
  std::vector<float> e(x.y.size()), o(x.y.size()), m(x.state.size(), 0.0f);
  ms::meta_state::workspace<float> ws;
  ms::wkv7::options opt;
  opt.exec.threads = threads;
  const ms::state_view<const float> start(x.state.data(), 1, H, 64);
  const ms::sequence_view<float> ev(e.data(), 1, T, H, 64), ov(o.data(), 1, T, H, 64);
  for (auto _ : st) {
    ms::meta_state::encode_sequence<N, Backend>(x.inputs(T), start, x.view(x.r, T), ev, 64, ws, opt);
    ms::meta_state::evolve<N, Backend>(x.view(x.w, T), x.view(x.a, T), x.view(x.b, T), ms::sequence_view<const float>(ev),
                                       x.view(x.r, T), ms::state_view<float>(m.data(), 1, H, 64), ov, ws, opt);
    benchmark::ClobberMemory();
  }
  bench::set_throughput_counters(st, T, 8.0 * 64 * 64 * H * T, threads);
}

/// One decoding token: the encoder reads the WKV state directly, then one Meta-State step.
template <int N, class Backend>
void meta_state_step(benchmark::State& st, int H, int threads) {
  workload x(1, H, 64);
  std::vector<float> e(x.y.size()), o(x.y.size()), m(x.state.size(), 0.0f);
  ms::meta_state::workspace<float> ws;
  ms::wkv7::options opt;
  opt.exec.threads = threads;
  const ms::sequence_view<float> ev(e.data(), 1, 1, H, 64), ov(o.data(), 1, 1, H, 64);
  for (auto _ : st) {
    ms::meta_state::encode(ms::state_view<const float>(x.state.data(), 1, H, 64), x.view(x.r, 1), ev, 64);
    ms::meta_state::evolve<N, Backend>(x.view(x.w, 1), x.view(x.a, 1), x.view(x.b, 1), ms::sequence_view<const float>(ev),
                                       x.view(x.r, 1), ms::state_view<float>(m.data(), 1, H, 64), ov, ws, opt);
    benchmark::ClobberMemory();
  }
  bench::set_throughput_counters(st, 1, 8.0 * 64 * 64 * H, threads);
}

template <class Backend>
void register_backend(const std::string& name) {
  for (int H : {1, 12, 32})
    for (int threads : {1, 2}) {
      const std::string tail = "/N:64/H:" + std::to_string(H) + "/B:1";
      const std::string th = "/threads:" + std::to_string(threads);
      benchmark::RegisterBenchmark(("meta_state_sequence/" + name + tail + "/T:4096" + th).c_str(),
                                   meta_state_sequence<64, Backend>, H, 4096, threads)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("meta_state_step/" + name + tail + th).c_str(), meta_state_step<64, Backend>, H,
                                   threads)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
}

const bool registered = [] {
  register_backend<ms::backend::eigen>("eigen");
  register_backend<ms::backend::simd<>>("simd");
  return true;
}();

}  // namespace
