// Model-level benchmarks: prefill and decode of a 0.1B-class RWKV-7 model, beside the
// machine's measured GEMM throughput and memory bandwidth.
#include <metastate/metastate.hpp>

#include <random>
#include <string>

#include "calibration.hpp"

namespace ms = metastate;
namespace mm = metastate::model;

namespace {

// L=12, C=768, N=64, V=65536: the 0.1B class of the released models; the Meta-State model
// of the same size has a Meta-State layer in place of every ChannelMix layer.
const mm::rwkv7_weights& model_0p1b(mm::block_kind kind) {
  static const mm::rwkv7_weights rwkv7 = mm::initialise(mm::make_config(12, 768, 64, 65536), 1, mm::init_kind::random);
  static const mm::rwkv7_weights meta_state = [] {
    auto c = mm::make_config(12, 768, 64, 65536);
    c.blocks.assign(12, mm::block_kind::meta_state);
    return mm::initialise(c, 1, mm::init_kind::random);
  }();
  return kind == mm::block_kind::meta_state ? meta_state : rwkv7;
}

/// Multiply-adds x 2 of the matrix products per token (the head only where logits are asked).
double matrix_flop_per_token(const mm::rwkv7_weights& w, bool with_head) {
  double params = with_head ? double(w.head.size()) : 0.0;
  for (const auto& l : w.layers) {
    const auto& a = l.att;
    for (const auto* m : {&a.receptance, &a.key, &a.value, &a.output, &a.w1, &a.w2, &a.a1, &a.a2, &a.v1, &a.v2,
                          &a.g1, &a.g2, &l.ffn.key, &l.ffn.value, &l.ms.output, &l.ms.proj})
      params += double(m->size());
  }
  return 2.0 * params;
}

double weight_bytes(const mm::rwkv7_weights& w) { return 2.0 * matrix_flop_per_token(w, true); }  // fp32: 4 B each

std::vector<std::int64_t> tokens(int count) {
  std::vector<std::int64_t> t(count);
  std::mt19937 gen(3);
  for (auto& x : t) x = std::uniform_int_distribution<int>(0, 65535)(gen);
  return t;
}

void calibration_gemm(benchmark::State& st, int threads) {
  // The shape of the FFN key product of a 512-token prefill chunk.
  const mm::matrix a = mm::matrix::Random(512, 768), b = mm::matrix::Random(3072, 768);
  mm::matrix c(512, 3072);
  Eigen::setNbThreads(threads);
  for (auto _ : st) {
    c.noalias() = a * b.transpose();
    benchmark::DoNotOptimize(c.data());
  }
  Eigen::setNbThreads(0);
  st.counters["gflops"] = benchmark::Counter(2.0 * 512 * 768 * 3072 / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

/// Sums 256 MiB (far beyond the caches) with independent vector accumulators: read bandwidth.
float stream_sum(const std::vector<float>& data) {
  using batch = xsimd::batch<float, ms::backend::default_simd_arch>;
  constexpr std::size_t lanes = batch::size, ways = 8;
  batch acc[ways];
  for (auto& a : acc) a = batch(0.0f);
  for (std::size_t i = 0; i + ways * lanes <= data.size(); i += ways * lanes)
    for (std::size_t k = 0; k < ways; ++k) acc[k] += batch::load_unaligned(data.data() + i + k * lanes);
  for (std::size_t k = 1; k < ways; ++k) acc[0] += acc[k];
  return xsimd::hadd(acc[0]);
}

void calibration_memory(benchmark::State& st) {
  std::vector<float> data(64 << 20, 1.0f);
  for (auto _ : st) benchmark::DoNotOptimize(stream_sum(data));
  st.counters["gb_per_second"] =
      benchmark::Counter(double(data.size()) * sizeof(float) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void model_prefill(benchmark::State& st, mm::block_kind kind, int T, int threads) {
  const auto& w = model_0p1b(kind);
  const auto input = tokens(T);
  mm::rwkv7_state state(w.config, 1);
  std::vector<float> logits(w.config.vocab);
  mm::forward_options opt;
  opt.exec.threads = threads;
  opt.chunk = T;
  opt.logits = mm::logits_for::last_token;
  for (auto _ : st) {
    state.reset();
    mm::forward(w, input.data(), T, state, logits.data(), opt);
  }
  const double flop = T * matrix_flop_per_token(w, false) + double(w.head.size()) * 2;
  st.counters["state_bytes"] = double(state.bytes());
  st.counters["tokens_per_second"] = benchmark::Counter(T, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["matrix_gflops"] = benchmark::Counter(flop / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

/// Sequence mode with the default chunk (128): the heap a forward pass holds at its peak
/// (workspace included, from a fresh state) for T = 256 and T = 1024, which must be equal,
/// then the time of one 128-token chunk.
void model_prefill_memory(benchmark::State& st, mm::block_kind kind) {
  const auto& w = model_0p1b(kind);
  const auto input = tokens(1024);
  std::vector<float> logits(w.config.vocab);
  mm::forward_options opt;
  opt.exec.threads = 1;
  opt.logits = mm::logits_for::last_token;
  {  // first, so that one-time allocations of the process (OpenMP, Eigen) are not counted below
    mm::rwkv7_state state(w.config, 1);
    mm::forward(w, input.data(), opt.chunk, state, logits.data(), opt);
  }
  for (int T : {256, 1024}) {
    const long long bytes = bench::heap_peak([&] {
      mm::rwkv7_state state(w.config, 1);
      mm::forward(w, input.data(), T, state, logits.data(), opt);
    });
    st.counters["peak_bytes_T" + std::to_string(T)] = double(bytes);
  }
  mm::rwkv7_state state(w.config, 1);
  for (auto _ : st) mm::forward(w, input.data(), opt.chunk, state, logits.data(), opt);
  st.counters["state_bytes"] = double(state.bytes());
  st.counters["tokens_per_second"] = benchmark::Counter(opt.chunk, benchmark::Counter::kIsIterationInvariantRate);
}

void model_decode(benchmark::State& st, mm::block_kind kind, int threads) {
  const auto& w = model_0p1b(kind);
  const auto input = tokens(1);
  mm::rwkv7_state state(w.config, 1);
  std::vector<float> logits(w.config.vocab);
  mm::forward_options opt;
  opt.exec.threads = threads;
  opt.chunk = 1;
  opt.logits = mm::logits_for::last_token;
  for (auto _ : st) mm::forward(w, input.data(), 1, state, logits.data(), opt);
  st.counters["tokens_per_second"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["weight_gb_per_second"] =
      benchmark::Counter(weight_bytes(w) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

const bool registered = [] {
  benchmark::RegisterBenchmark("calibration/memory_read", calibration_memory)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (int threads : {1, 2}) {
    const std::string th = "/threads:" + std::to_string(threads);
    benchmark::RegisterBenchmark(("calibration/gemm/M:512/N:3072/K:768" + th).c_str(), calibration_gemm, threads)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    for (auto [kind, name] : {std::pair{mm::block_kind::channel_mix, "rwkv7"},
                              std::pair{mm::block_kind::meta_state, "meta_state"}}) {
      const std::string model = std::string(name) + "/L:12/C:768/N:64/V:65536";
      benchmark::RegisterBenchmark(("model_prefill/" + model + "/T:512" + th).c_str(), model_prefill, kind, 512,
                                   threads)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("model_decode/" + model + th).c_str(), model_decode, kind, threads)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      if (threads == 1)
        benchmark::RegisterBenchmark(("model_prefill_memory/" + model + "/chunk:128" + th).c_str(),
                                     model_prefill_memory, kind)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    }
  }
  return true;
}();

}  // namespace
