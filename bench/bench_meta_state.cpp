// Meta-State op benchmarks: a layer's recurrent work chunk by chunk beside the WKV-7 op alone
// (counted like the WKV-7 benchmarks, so the two compare per token and head), and one
// decoding step. (The Meta-State model's prefill and decode are in bench_model.cpp.)
#include <metastate/metastate.hpp>

#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>

#include "calibration.hpp"
#include "workload.hpp"

namespace ms = metastate;

namespace {

using bench::workload;

/// The recurrent work of a layer as the model runs it, chunk by chunk: the WKV-7 op alone
/// (`meta` false: the baseline), or the WKV-7 op and a Meta-State layer's ops: from what the
/// WKV-7 op recorded every `every` tokens, `evolve_recorded` (the encoder and the Meta-State
/// recurrence with its readout in one pass, as the model runs them); with `every` = 0 the
/// replay encoder, then `evolve`. Both count the WKV-7 op's flop, so tokens/s compare
/// directly. A Meta-State entry also runs the baseline in every iteration
/// (`bench::interleaved`) and reports `over_wkv7`: the Meta-State layer's cost over the
/// WKV-7 op's.
/// Every chunk reads the same chunk-sized inputs, which stay in the caches: in the model the
/// projections have just written them (inputs streamed from memory slowed the baseline
/// alone, by a third at H = 12, and flattered the ratio).
template <int N, class Backend>
void layer_chunks(benchmark::State& st, int H, int T, int chunk, int every, bool meta, int threads) {
  workload x(chunk, H, 64);
  // Outputs per chunk, reused as the model's workspace is.
  ms::aligned_vector<float> y(std::size_t(chunk) * H * 64), e(y.size()), o(y.size()), m(x.state.size(), 0.0f),
      start(x.state.size()), baseline_state(x.state);
  ms::meta_state::workspace<float> ws;
  ms::wkv7::options opt;
  opt.exec.threads = threads;
  ms::wkv7::record<float> record(meta ? every : 0);
  auto at = [&](const ms::aligned_vector<float>& v, int tokens) {
    return ms::sequence_view<const float>(v.data(), 1, tokens, H, 64);
  };
  auto out = [&](ms::aligned_vector<float>& v, int tokens) {
    return ms::sequence_view<float>(v.data(), 1, tokens, H, 64);
  };
  auto inputs = [&](int tokens) {
    return ms::wkv7::inputs<float>{at(x.r, tokens), at(x.w, tokens), at(x.k, tokens),
                                   at(x.v, tokens), at(x.a, tokens), at(x.b, tokens)};
  };
  auto wkv7_alone = [&](ms::aligned_vector<float>& state) {
    for (int t0 = 0; t0 < T; t0 += chunk) {
      const int Tc = std::min(chunk, T - t0);
      ms::wkv7::sequence<N, Backend>(inputs(Tc), ms::state_view<float>(state.data(), 1, H, 64), out(y, Tc), opt);
    }
  };
  auto layer = [&] {
    for (int c0 = 0; c0 < T; c0 += chunk) {
      const int Tc = std::min(chunk, T - c0);
      const auto in = inputs(Tc);
      const ms::state_view<float> m_view(m.data(), 1, H, 64);
      if (every == 0) start = x.state;  // the replay starts from it
      ms::wkv7::sequence<N, Backend>(in, ms::state_view<float>(x.state.data(), 1, H, 64), out(y, Tc), opt, record);
      if (every > 0) {  // what the model runs: the encoder and the evolution in one pass
        ms::meta_state::evolve_recorded(in, record, at(x.r, Tc), m_view, out(o, Tc), 64, ws, opt);
        continue;
      }
      const ms::state_view<const float> start_view(start.data(), 1, H, 64);
      ms::meta_state::encode_sequence<N, Backend>(in, start_view, at(x.r, Tc), out(e, Tc), 64, ws, opt);
      ms::meta_state::evolve<N, Backend>(in.w, in.a, in.b, ms::sequence_view<const float>(out(e, Tc)), at(x.r, Tc),
                                         m_view, out(o, Tc), ws, opt);
    }
  };
  if (meta) {
    st.counters["over_wkv7"] = 1 / bench::interleaved(st, [&] { wkv7_alone(baseline_state); }, layer) - 1;
  } else {
    for (auto _ : st) {
      wkv7_alone(x.state);
      benchmark::ClobberMemory();
    }
  }
  bench::set_throughput_counters(st, T, 8.0 * 64 * 64 * H * T, threads);
}

/// One decoding token: the encoder reads the WKV state directly, then one Meta-State step.
template <int N, class Backend>
void meta_state_step(benchmark::State& st, int H, int threads) {
  workload x(1, H, 64);
  ms::aligned_vector<float> e(x.y.size()), o(x.y.size()), m(x.state.size(), 0.0f);
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
      // Chunks of 128 tokens, the model's default: "wkv7" is the baseline, "meta_state" adds
      // the Meta-State ops (record:0 = the replay encoder). `evolve_recorded` takes no
      // backend (its pass is vectorised code of its own), so the recorded entries run
      // beside the `simd` op only, as the model runs them.
      for (const auto& [what, every] : {std::pair{"wkv7", 0}, std::pair{"meta_state", 0}, std::pair{"meta_state", 8},
                                        std::pair{"meta_state", 16}}) {
        const bool meta = what[0] == 'm';
        if (every > 0 && !std::is_same_v<Backend, ms::backend::simd<>>) continue;
        bench::timed(benchmark::RegisterBenchmark(("layer_chunks/" + std::string(what) + "/" + name + tail +
                                                   "/T:4096/chunk:128/record:" + std::to_string(every) + th)
                                                      .c_str(),
                                                  layer_chunks<64, Backend>, H, 4096, 128, every, meta, threads),
                     meta)
            ->Unit(benchmark::kMillisecond);
      }
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
