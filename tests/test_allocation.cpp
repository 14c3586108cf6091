// Heap use (tests/heap_counter.hpp): wkv7::step allocates nothing for a static head size
// (Eigen's nomalloc test), and a model's sequence-mode memory does not grow with T.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <metastate/model/rwkv7.hpp>

#include <algorithm>
#include <new>

#include "heap_counter.hpp"
#include "model_fixture.hpp"
#include "wkv_harness.hpp"

using heap_counter::allocations;
using heap_counter::counting;

namespace ms = metastate;

TEST_CASE_TEMPLATE("wkv7 step allocates nothing for a static head size", Backend, ms::backend::scalar,
                   ms::backend::eigen, ms::backend::simd<>,
                   ms::backend::simd<ms::backend::narrow_simd_arch>) {
  for (auto type_tag : {0, 1}) {
    // 2 x 64 heads: 2^19 state-element updates, above the library's one-thread threshold
    // (2^18), so that the two-thread step does fork.
    const auto p = ref::random_problem(2, 1, 64, 64, 3);
    auto run = [&](auto storage) {
      using T = decltype(storage);
      harness::stored_inputs<T> in(p);
      std::vector<T> y(p.seq_size());
      std::vector<float> state = harness::convert<float>(p.s0);
      const ms::state_view<float> sv(state.data(), p.B, p.H, p.N);
      const ms::sequence_view<T> yv(y.data(), p.B, 1, p.H, p.N);
      for (int threads : {1, 2}) {
        ms::wkv7::options opt;
        opt.exec.threads = threads;
        ms::wkv7::step<64, Backend>(in.all(), sv, yv, opt);  // warm-up: OpenMP builds its team here
        allocations = 0;
        counting = true;
        ms::wkv7::step<64, Backend>(in.all(), sv, yv, opt);
        counting = false;
        CAPTURE(threads);
        CHECK(allocations.load() == 0);
      }
    };
    if (type_tag == 0) run(float{});
    else run(Eigen::bfloat16{});
  }
}

TEST_CASE("the allocation counter sees a heap allocation (the check can fail)") {
  allocations = 0;
  counting = true;
  auto* p = new std::vector<int>(100);
  counting = false;
  delete p;
  CHECK(allocations.load() >= 2);
}

TEST_CASE("sequence-mode memory does not grow with T (RWKV-7 and Meta-State layers)") {
  namespace mm = ms::model;
  const auto w = mm::initialise(fixture::small_config(2, 64, 4, 16, 50, 0, "FM"), 1, mm::init_kind::random);
  std::vector<std::int64_t> tokens(8192);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::int64_t>(i * 7 % 50);
  std::vector<float> logits(50);
  mm::forward_options opt;
  opt.chunk = 64;
  opt.logits = mm::logits_for::last_token;
  {  // first, so that one-time allocations of the process (OpenMP, Eigen) are not counted below
    mm::rwkv7_state state(w.config, 1);
    mm::forward(w, tokens.data(), 64, state, logits.data(), opt);
  }
  auto peak_above_start = [&](ms::index_t T) {
    mm::rwkv7_state state(w.config, 1);
    const long long start = heap_counter::restart_peak();
    mm::forward(w, tokens.data(), T, state, logits.data(), opt);
    return heap_counter::peak_bytes.load() - start;
  };
  const long long short_run = peak_above_start(256), long_run = peak_above_start(8192);
  MESSAGE("peak working memory: " << short_run << " bytes for T = 256, " << long_run << " bytes for T = 8192");
  CHECK(short_run > 0);  // the counter sees the workspace
  CHECK(long_run == short_run);
}

TEST_CASE("decoding allocates nothing after the first token (RWKV-7 and Meta-State layers, head size 16)") {
  namespace mm = ms::model;
  const auto w = mm::initialise(fixture::small_config(2, 64, 4, 16, 50, 0, "FM", 12), 2, mm::init_kind::random);
  mm::rwkv7_state state(w.config, 1);
  std::vector<float> logits(50);
  mm::forward_options opt;
  opt.chunk = 1;
  opt.logits = mm::logits_for::last_token;
  opt.exec.threads = 1;
  const std::int64_t tokens[] = {3, 7, 11};
  mm::forward(w, tokens, 1, state, logits.data(), opt);  // sizes the workspace
  allocations = 0;
  counting = true;
  mm::forward(w, tokens + 1, 1, state, logits.data(), opt);
  mm::forward(w, tokens + 2, 1, state, logits.data(), opt);
  counting = false;
  CHECK(allocations.load() == 0);
}

TEST_CASE_TEMPLATE("a sequence call allocates nothing once warmed up (with a record; then the Meta-State pass)",
                   Backend, ms::backend::scalar, ms::backend::eigen, ms::backend::simd<>) {
  // 8 heads of 64 over 40 tokens: 2^20.3 updates, so two threads fork and each runs several
  // units at once (the path that keeps a set of units per thread).
  const auto p = ref::random_problem(1, 40, 8, 64, 9);
  const harness::stored_inputs<float> in(p);
  std::vector<float> y(p.seq_size()), o(p.seq_size()), state = harness::convert<float>(p.s0),
      m(std::size_t(p.H) * p.N * p.N, 0.0f);
  const ms::state_view<float> sv(state.data(), p.B, p.H, p.N), mv(m.data(), p.B, p.H, p.N);
  const ms::sequence_view<float> yv(y.data(), p.B, p.T, p.H, p.N), ov(o.data(), p.B, p.T, p.H, p.N);
  ms::wkv7::record<float> record(ms::meta_state::record_every);
  ms::meta_state::workspace<float> ws;
  for (int threads : {1, 2}) {
    ms::wkv7::options opt;
    opt.exec.threads = threads;
    auto run = [&] {
      ms::wkv7::sequence<64, Backend>(in.all(), sv, yv, opt);
      ms::wkv7::sequence<64, Backend>(in.all(), sv, yv, opt, record);
      ms::meta_state::evolve_recorded(in.all(), record, in.view(in.r), mv, ov, p.N, ws, opt);
    };
    run();  // sizes the threads' scratch, the record and the workspace; OpenMP builds its team
    allocations = 0;
    counting = true;
    run();
    counting = false;
    CAPTURE(threads);
    CHECK(allocations.load() == 0);
  }
}

TEST_CASE("an allocation that fails on a worker thread reaches the caller as std::bad_alloc") {
  // Each thread of the simd sequence kernel grows its working buffer to the call's need
  // inside the parallel region: 128 heads on two threads take 64 units each, 64 x 65 x 64
  // floats (about 1 MiB), more than any earlier call in this program. Allocations from
  // 512 KiB up fail; the exception must leave the region on its thread and reach the caller
  // (escaping the region, it would terminate the program).
  const auto p = ref::random_problem(1, 16, 128, 64, 5);
  const harness::stored_inputs<float> in(p);
  std::vector<float> y(p.seq_size()), state = harness::convert<float>(p.s0);
  const ms::state_view<float> sv(state.data(), p.B, p.H, p.N);
  const ms::sequence_view<float> yv(y.data(), p.B, p.T, p.H, p.N);
  ms::wkv7::options opt;
  opt.exec.threads = 2;
  auto run = [&] { ms::wkv7::sequence<64, ms::backend::simd<>>(in.all(), sv, yv, opt); };
  heap_counter::fail_from = std::size_t(512) << 10;
  CHECK_THROWS_AS(run(), std::bad_alloc);
  heap_counter::fail_from = 0;
  const auto start = harness::convert<float>(p.s0);  // (the failed call left the state unspecified)
  std::copy(start.begin(), start.end(), state.begin());
  run();
  std::vector<double> expected = p.s0;
  ref::wkv7(p, expected);
  CHECK(ref::rms_relative(harness::widen(state), expected) <= 1e-6);
}
