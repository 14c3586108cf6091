// Meta-State layers and models: against the fp64 reference, modes that agree, causality, isolation, stability.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include <metastate/metastate.hpp>

#include "model_fixture.hpp"
#include "reference.hpp"
#include "reference_model.hpp"
#include "wkv_harness.hpp"

namespace ms = metastate;
namespace mm = metastate::model;
using fixture::random_tokens;
using fixture::run;
using fixture::flatten;

/// `every` = 0: the replay encoder; otherwise `encode_recorded` then `evolve`, and
/// `evolve_recorded` (both from the record). `rare_decay` > 0: one decay in seven is this
/// small (1e-30: products of a block's decays fall below what the encoder divides by; 1e-8:
/// the encoder divides, the evolution runs the plain recurrence instead of the deferred form). B = H = 2 unless given; `threads` 0 = OpenMP's
/// default.
template <int N, class Backend, class Storage = float>
void check_meta_state_ops(int head_size, int n, int T, int every = 0, double rare_decay = 0, int batch = 2,
                          int heads = 2, int threads = 0) {
  CAPTURE(head_size);
  CAPTURE(n);
  CAPTURE(T);
  CAPTURE(every);
  CAPTURE(rare_decay);
  CAPTURE(batch);
  CAPTURE(heads);
  CAPTURE(threads);
  auto p = ref::random_problem(batch, T, heads, head_size, 31 + head_size + T);
  if (rare_decay > 0)
    for (std::size_t i = 0; i < p.w.size(); i += 7) p.w[i] = rare_decay;
  auto in = harness::random_meta_state(p, n, 32 + n);
  // The reference sees the inputs rounded to the storage type (identity for float and double).
  for (auto* x : {&p.r, &p.w, &p.k, &p.v, &p.a, &p.b, &in.x}) *x = harness::widen(harness::convert<Storage>(*x));
  auto m = in.m0;
  const auto o = ref::meta_state(p, in.x, n, m);
  const double budget = std::is_same_v<Storage, double> ? 1e-12 : std::is_same_v<Storage, float> ? 1e-6 : 1e-2;
  for (bool fused : {false, true}) {
    if (fused && every == 0) continue;
    CAPTURE(fused);
    const auto got = harness::run_meta_state<N, Backend, Storage>(p, in, every, threads, ms::wkv7::decay_input::w, fused);
    CHECK(ref::rms_relative(got.y, o) <= budget);
    CHECK(ref::rms_relative(got.state, m) <= budget);
  }
}

TEST_CASE("meta-state ops (encode_sequence, evolve) match the fp64 op reference (SPEC §4, §7: 1e-6)") {
  for (int T : {1, 33}) {
    check_meta_state_ops<32, ms::backend::scalar>(32, 32, T);
    check_meta_state_ops<32, ms::backend::default_backend>(32, 20, T);
    check_meta_state_ops<48, ms::backend::default_backend>(48, 48, T);
    check_meta_state_ops<64, ms::backend::default_backend>(64, 64, T);
    check_meta_state_ops<ms::dynamic, ms::backend::default_backend>(64, 40, T);
  }
}

TEST_CASE("encode_recorded (from what wkv7::sequence recorded) matches the fp64 op reference (1e-6)") {
  for (int T : {1, 16, 33, 70}) {
    for (int every : {1, 5, 8, 16, 64}) {
      check_meta_state_ops<32, ms::backend::scalar>(32, 32, T, every);
      check_meta_state_ops<64, ms::backend::default_backend>(64, 64, T, every);
      check_meta_state_ops<48, ms::backend::default_backend>(48, 20, T, every);
      check_meta_state_ops<ms::dynamic, ms::backend::eigen>(24, 24, T, every);
    }
  }
  check_meta_state_ops<64, ms::backend::default_backend>(64, 64, 70, 8, 1e-30);
  check_meta_state_ops<ms::dynamic, ms::backend::default_backend>(40, 36, 33, 16, 1e-30);
  check_meta_state_ops<64, ms::backend::default_backend>(64, 64, 70, 16, 1e-8);
  check_meta_state_ops<ms::dynamic, ms::backend::default_backend>(40, 36, 33, 16, 1e-8);
  check_meta_state_ops<64, ms::backend::default_backend, Eigen::bfloat16>(64, 64, 33, 8);
  check_meta_state_ops<32, ms::backend::eigen, Eigen::half>(32, 20, 33, 5);
  check_meta_state_ops<32, ms::backend::scalar, double>(32, 24, 33, 8);
}

TEST_CASE("meta-state ops take log-decays: the replay and the recorded encoder, and evolve (1e-6)") {
  // N = n = 64; and N = 48, n = 20 (channels padded to whole vectors) with one decay in seven
  // 1e-30 (the recorded encoder's undivided path).
  struct config {
    int N, n;
    bool tiny_decays;
  };
  for (const config c : {config{64, 64, false}, config{48, 20, true}}) {
    for (int every : {0, 5, 16}) {
      CAPTURE(c.N);
      CAPTURE(every);
      auto p = ref::random_problem(2, 33, 2, c.N, 41);
      if (c.tiny_decays)
        for (std::size_t i = 0; i < p.w.size(); i += 7) p.w[i] = 1e-30;
      auto logged = p;
      for (std::size_t i = 0; i < p.w.size(); ++i) {
        logged.w[i] = static_cast<float>(std::log(p.w[i]));  // what the ops read
        p.w[i] = std::exp(logged.w[i]);                        // the decay that means
      }
      auto in = harness::random_meta_state(p, c.n, 42);
      for (auto* x : {&p.r, &p.k, &p.v, &p.a, &p.b, &in.x}) *x = harness::widen(harness::convert<float>(*x));
      auto m = in.m0;
      const auto o = ref::meta_state(p, in.x, c.n, m);
      for (bool fused : {false, true}) {
        if (fused && every == 0) continue;
        CAPTURE(fused);
        const auto got = harness::run_meta_state<ms::dynamic, ms::backend::default_backend, float>(
            logged, in, every, 0, ms::wkv7::decay_input::log_w, fused);
        CHECK(ref::rms_relative(got.y, o) <= 1e-6);
        CHECK(ref::rms_relative(got.state, m) <= 1e-6);
      }
    }
  }
}

TEST_CASE("evolve_recorded runs the plain recurrence where the deferred form would overflow") {
  // M_0 near 1e30 and one decay in seven 1e-8: a block's decays multiply to about 1e-24, and
  // M / P would pass fp32's 3e38; the op must stay finite and match the reference (1e-6).
  auto p = ref::random_problem(1, 40, 2, 32, 51);
  for (std::size_t i = 0; i < p.w.size(); i += 7) p.w[i] = 1e-8;
  auto in = harness::random_meta_state(p, 32, 52);
  for (auto& v : in.m0) v *= 1e30;
  for (auto* x : {&p.r, &p.w, &p.k, &p.v, &p.a, &p.b, &in.x, &in.m0}) *x = harness::widen(harness::convert<float>(*x));
  auto m = in.m0;
  const auto o = ref::meta_state(p, in.x, 32, m);
  const auto got = harness::run_meta_state<32, ms::backend::default_backend, float>(p, in, 16, 0,
                                                                                   ms::wkv7::decay_input::w, true);
  CHECK(ref::rms_relative(got.y, o) <= 1e-6);
  CHECK(ref::rms_relative(got.state, m) <= 1e-6);
}

TEST_CASE("encode_recorded and evolve_recorded split their work over threads correctly (whole heads, or not)") {
  // 70 tokens of N = n = 64 in blocks of 16 are enough work for two threads. One head: the
  // two threads split its blocks (evolve_recorded: then split M's rows). Three heads: each
  // thread takes whole heads, unevenly. Four heads of 301 tokens: each thread's share of the
  // inputs and record is over `prefetch_min_bytes`, so the fused pass prefetches each next
  // unit's (the last block short: its tokens list more lines than their sweeps have columns),
  // in float and in bfloat16; of 289 tokens, the last block's one token has a share too large
  // to list.
  for (int threads : {1, 2}) {
    check_meta_state_ops<64, ms::backend::default_backend>(64, 64, 70, 16, 0, 1, 1, threads);
    check_meta_state_ops<64, ms::backend::default_backend>(64, 64, 70, 16, 0, 1, 3, threads);
    check_meta_state_ops<64, ms::backend::default_backend>(64, 64, 70, 16, 0, 3, 1, threads);
    check_meta_state_ops<64, ms::backend::default_backend>(64, 64, 301, 16, 0, 1, 4, threads);
    check_meta_state_ops<64, ms::backend::default_backend, Eigen::bfloat16>(64, 64, 301, 16, 0, 1, 4, threads);
    check_meta_state_ops<64, ms::backend::default_backend>(64, 64, 289, 16, 0, 1, 4, threads);
  }
}

TEST_CASE("encode_recorded takes only a record filled by a call of its own shape and decay input") {
  const auto p = ref::random_problem(1, 9, 1, 16, 5);
  const harness::stored_inputs<float> in(p);
  std::vector<float> x(p.seq_size()), e(p.seq_size()), y(p.seq_size()), state(p.state_size());
  ms::meta_state::workspace<float> ws;
  auto inputs = [&](int tokens) { return in.all(0, tokens); };
  std::vector<float> log_w(in.w.size());
  std::transform(in.w.begin(), in.w.end(), log_w.begin(), [](float w) { return std::log(w); });
  auto fill = [&](ms::wkv7::record<float>& saved, int tokens, ms::wkv7::decay_input decay) {
    ms::wkv7::options opt;
    opt.decay = decay;
    auto all = inputs(tokens);
    if (decay == ms::wkv7::decay_input::log_w) all.w = ms::sequence_view<const float>(log_w.data(), 1, tokens, 1, 16);
    ms::wkv7::sequence<16>(all, ms::state_view<float>(state.data(), 1, 1, 16),
                           ms::sequence_view<float>(y.data(), 1, tokens, 1, 16), opt, saved);
  };
  auto encode = [&](const ms::wkv7::record<float>& saved, int tokens) {
    ms::meta_state::encode_recorded(inputs(tokens), saved, ms::sequence_view<const float>(x.data(), 1, tokens, 1, 16),
                                    ms::sequence_view<float>(e.data(), 1, tokens, 1, 16), 16, ws);
  };
  const auto w = ms::wkv7::decay_input::w, log_w_input = ms::wkv7::decay_input::log_w;
  ms::wkv7::record<float> saved(4);
  CHECK_THROWS_WITH_AS(encode(saved, 9),
                       "meta_state::encode_recorded: the record holds nothing; wkv7::sequence fills it",
                       ms::shape_error);
  fill(saved, 8, w);
  CHECK_THROWS_WITH_AS(encode(saved, 9),
                       "meta_state::encode_recorded: the record was filled by a call of shape [1,8,1,16] with decays "
                       "w, this call is [1,9,1,16] with decays w",
                       ms::shape_error);
  CHECK_NOTHROW(encode(saved, 8));
  fill(saved, 9, log_w_input);
  CHECK_THROWS_WITH_AS(encode(saved, 9),
                       "meta_state::encode_recorded: the record was filled by a call of shape [1,9,1,16] with "
                       "log-decays, this call is [1,9,1,16] with decays w",
                       ms::shape_error);
  fill(saved, 9, w);
  CHECK_NOTHROW(encode(saved, 9));
  // A record of the right shape left by other inputs (tokens 1..8 where it holds 0..7).
  fill(saved, 8, w);
  CHECK_NOTHROW(encode(saved, 8));
  const std::string stale =
      ": the record was filled on other inputs (their first or last rows differ from this call's); wkv7::sequence "
      "must fill it on the same inputs";
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_recorded(in.all(1, 8), saved,
                                                       ms::sequence_view<const float>(x.data(), 1, 8, 1, 16),
                                                       ms::sequence_view<float>(e.data(), 1, 8, 1, 16), 16, ws),
                       ("meta_state::encode_recorded" + stale).c_str(), ms::value_error);
  std::vector<float> m(16 * 16);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve_recorded(in.all(1, 8), saved,
                                                       ms::sequence_view<const float>(x.data(), 1, 8, 1, 16),
                                                       ms::state_view<float>(m.data(), 1, 1, 16),
                                                       ms::sequence_view<float>(e.data(), 1, 8, 1, 16), 16, ws),
                       ("meta_state::evolve_recorded" + stale).c_str(), ms::value_error);
  // The same from a zero state, where every recorded u_0 = S_0 a_0 is 0 whatever a_0; and
  // inputs that differ only in their last token's a.
  std::fill(state.begin(), state.end(), 0.0f);
  ms::wkv7::sequence<16>(in.all(1, 8), ms::state_view<float>(state.data(), 1, 1, 16),
                         ms::sequence_view<float>(y.data(), 1, 8, 1, 16), {}, saved);
  CHECK_THROWS_WITH_AS(encode(saved, 8), ("meta_state::encode_recorded" + stale).c_str(), ms::value_error);
  std::vector<float> last_a(in.a.begin(), in.a.begin() + 8 * 16);
  last_a.back() += 0.5f;
  auto changed = inputs(8);
  changed.a = ms::sequence_view<const float>(last_a.data(), 1, 8, 1, 16);
  fill(saved, 8, w);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_recorded(changed, saved, ms::sequence_view<const float>(x.data(), 1, 8, 1, 16),
                                                       ms::sequence_view<float>(e.data(), 1, 8, 1, 16), 16, ws),
                       ("meta_state::encode_recorded" + stale).c_str(), ms::value_error);
  ms::wkv7::record<float> nothing(0), too_long(ms::meta_state::max_every + 1);
  fill(nothing, 9, w);
  fill(too_long, 9, w);
  CHECK_THROWS_WITH_AS(encode(nothing, 9), "meta_state::encode_recorded: the record needs every >= 1, got every = 0",
                       ms::shape_error);
  CHECK_THROWS_WITH_AS(encode(too_long, 9), doctest::Contains("takes at most 64"), ms::shape_error);
}

TEST_CASE("meta-state ops reject outputs that share memory with their other tensors, naming both") {
  const int T_ = 8, N = 16;
  const auto p = ref::random_problem(1, T_, 1, N, 7);
  const harness::stored_inputs<float> in(p);
  std::vector<float> x(p.seq_size()), e(p.seq_size()), o(p.seq_size()), m(p.state_size()), start(p.state_size());
  ms::meta_state::workspace<float> ws;
  // [1, tokens, 1, N] views; all T_ tokens unless given.
  auto seq = [&](float* data, int tokens = 0) { return ms::sequence_view<float>(data, 1, tokens ? tokens : T_, 1, N); };
  auto cseq = [&](const float* data, int tokens = 0) {
    return ms::sequence_view<const float>(data, 1, tokens ? tokens : T_, 1, N);
  };
  const ms::state_view<const float> start_view(start.data(), 1, 1, N);
  const std::string tail = "' in memory; the op does not work in place, so outputs need memory of their own";
  CHECK_THROWS_WITH_AS(ms::meta_state::encode(start_view, cseq(x.data(), 1), seq(x.data() + 4, 1), N),
                       ("meta_state::encode: tensor 'e' overlaps 'x" + tail).c_str(), ms::overlap_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode(start_view, cseq(x.data(), 1), seq(start.data() + N, 1), N),
                       ("meta_state::encode: tensor 'e' overlaps 'state" + tail).c_str(), ms::overlap_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_sequence<N>(in.all(), start_view, cseq(x.data()),
                                                          seq(const_cast<float*>(in.v.data())), N, ws),
                       ("meta_state::encode_sequence: tensor 'e' overlaps 'v" + tail).c_str(), ms::overlap_error);
  ms::wkv7::record<float> saved(4);
  std::vector<float> y(p.seq_size());
  ms::wkv7::sequence<N>(in.all(), ms::state_view<float>(start.data(), 1, 1, N), seq(y.data()), {}, saved);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_recorded(in.all(), saved, cseq(x.data()),
                                                       seq(const_cast<float*>(in.k.data())), N, ws),
                       ("meta_state::encode_recorded: tensor 'e' overlaps 'k" + tail).c_str(), ms::overlap_error);
  const ms::state_view<float> mv(m.data(), 1, 1, N);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve_recorded(in.all(), saved, cseq(x.data()), mv, seq(x.data()), N, ws),
                       ("meta_state::evolve_recorded: tensor 'o' overlaps 'x" + tail).c_str(), ms::overlap_error);
  // A state inside an input: m (N x N) is larger than one input, so the input is a view of a
  // buffer with room for m (pointing m at an input's own vector would also cover whatever the
  // heap put after it, which differs between builds).
  std::vector<float> roomy(p.state_size() + p.seq_size());
  const ms::state_view<float> m_in_roomy(roomy.data(), 1, 1, N);
  auto r_in_roomy = in.all();
  r_in_roomy.r = cseq(roomy.data());
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve_recorded(r_in_roomy, saved, cseq(x.data()), m_in_roomy, seq(o.data()),
                                                       N, ws),
                       ("meta_state::evolve_recorded: tensor 'm' overlaps 'r" + tail).c_str(), ms::overlap_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve_recorded(in.all(), saved, cseq(x.data()), mv,
                                                       seq(const_cast<float*>(in.a.data())), N, ws),
                       ("meta_state::evolve_recorded: tensor 'o' overlaps 'a" + tail).c_str(), ms::overlap_error);
  const auto w = in.view(in.w), a = in.view(in.a), b = in.view(in.b);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve<N>(w, a, b, cseq(e.data()), cseq(x.data()), mv, seq(x.data()), ws),
                       ("meta_state::evolve: tensor 'o' overlaps 'x" + tail).c_str(), ms::overlap_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve<N>(w, a, b, cseq(e.data()), cseq(x.data()),
                                                 ms::state_view<float>(o.data(), 1, 1, N), seq(o.data()), ws),
                       ("meta_state::evolve: tensor 'o' overlaps 'm" + tail).c_str(), ms::overlap_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve<N>(cseq(roomy.data()), a, b, cseq(e.data()), cseq(x.data()), m_in_roomy,
                                                 seq(o.data()), ws),
                       ("meta_state::evolve: tensor 'm' overlaps 'w" + tail).c_str(), ms::overlap_error);
  // evolve names its own tensors in shape errors too (not those of the WKV-7 op it runs).
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve<N>(w, a, b, cseq(e.data(), T_ - 1), cseq(x.data()), mv, seq(o.data()), ws),
                       "meta_state::evolve: tensor 'e' has shape [1,7,1,16], expected [1,8,1,16]", ms::shape_error);
  CHECK_NOTHROW(ms::meta_state::evolve<N>(w, a, b, cseq(e.data()), cseq(x.data()), mv, seq(o.data()), ws));
}

TEST_CASE("meta-state ops check every tensor's shape and name it") {
  const int T_ = 8, N = 16;
  const auto p = ref::random_problem(1, T_, 2, N, 9);
  const harness::stored_inputs<float> in(p);
  std::vector<float> x(p.seq_size()), e(p.seq_size()), o(p.seq_size()), m(p.state_size()), start(p.state_size()),
      y(p.seq_size());
  ms::meta_state::workspace<float> ws;
  const ms::sequence_view<const float> xv(x.data(), 1, T_, 2, N), short_w(in.w.data(), 1, 1, 2, N);
  const ms::sequence_view<float> ev(e.data(), 1, T_, 2, N);
  auto with_w = [&](ms::sequence_view<const float> w) {
    auto all = in.all();
    all.w = w;
    return all;
  };
  ms::wkv7::record<float> saved(8);
  ms::wkv7::sequence<N>(in.all(), ms::state_view<float>(m.data(), 1, 2, N),
                        ms::sequence_view<float>(y.data(), 1, T_, 2, N), {}, saved);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_recorded(with_w(short_w), saved, xv, ev, N, ws),
                       "meta_state::encode_recorded: tensor 'w' has shape [1,1,2,16], expected [1,8,2,16]",
                       ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_recorded(with_w(ms::sequence_view<const float>(nullptr, 1, T_, 2, N)),
                                                       saved, xv, ev, N, ws),
                       "meta_state::encode_recorded: tensor 'w' has no data", ms::shape_error);
  const ms::sequence_view<float> ov(o.data(), 1, T_, 2, N);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve_recorded(in.all(), saved, xv, ms::state_view<float>(m.data(), 1, 1, N),
                                                       ov, N, ws),
                       "meta_state::evolve_recorded: tensor 'm' has shape [1,1,16,16], expected [1,2,16,16]",
                       ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve_recorded(in.all(), saved, xv, ms::state_view<float>(m.data(), 1, 2, N),
                                                       ms::sequence_view<float>(o.data(), 1, T_, 2, 8), N, ws),
                       "meta_state::evolve_recorded: tensor 'o' has shape [1,8,2,8], expected [1,8,2,16]",
                       ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve_recorded(in.all(), saved, xv, ms::state_view<float>(m.data(), 1, 2, N),
                                                       ov, N + 1, ws),
                       "meta_state::evolve_recorded: sse_dim 17 must be in [1, head size 16]", ms::shape_error);
  ms::wkv7::options negative;
  negative.exec.threads = -1;
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_recorded(in.all(), saved, xv, ev, N, ws, negative),
                       "meta_state::encode_recorded: exec.threads must be >= 0 (0: OpenMP's default), got -1",
                       ms::value_error);
  // (With no token the pass does no work, and had never asked.)
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve_recorded(in.all(0, 0), saved, in.view(in.r, 0, 0),
                                                       ms::state_view<float>(m.data(), 1, 2, N),
                                                       ms::sequence_view<float>(o.data(), 1, 0, 2, N), N, ws, negative),
                       "meta_state::evolve_recorded: exec.threads must be >= 0 (0: OpenMP's default), got -1",
                       ms::value_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve(in.view(in.w), in.view(in.a), in.view(in.b),
                                              ms::sequence_view<const float>(ev), xv, ms::state_view<float>(m.data(), 1, 2, N),
                                              ov, ws, negative),
                       "meta_state::evolve: exec.threads must be >= 0 (0: OpenMP's default), got -1", ms::value_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_sequence<N>(in.all(), ms::state_view<const float>(start.data(), 1, 1, N),
                                                          xv, ev, N, ws),
                       "meta_state::encode_sequence: tensor 'start' has shape [1,1,16,16], expected [1,2,16,16]",
                       ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_sequence<32>(in.all(), ms::state_view<const float>(start.data(), 1, 2, N),
                                                           xv, ev, N, ws),
                       "meta_state::encode_sequence: tensor 'r' has shape [1,8,2,16], expected [1,8,2,32]",
                       ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve<8>(in.view(in.w), in.view(in.a), in.view(in.b), ms::sequence_view<const float>(ev),
                                                 xv, ms::state_view<float>(m.data(), 1, 2, N),
                                                 ms::sequence_view<float>(o.data(), 1, T_, 2, N), ws),
                       "meta_state::evolve: tensor 'm' has head size 16, the template head size is 8", ms::shape_error);
  auto short_k = in.all();
  short_k.k = short_w;
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_sequence<N>(short_k, ms::state_view<const float>(start.data(), 1, 2, N),
                                                          xv, ev, N, ws),
                       "meta_state::encode_sequence: tensor 'k' has shape [1,1,2,16], expected [1,8,2,16]",
                       ms::shape_error);
  // Negative extents, named before any buffer is sized from them.
  const ms::sequence_view<const float> negative_w(in.w.data(), -1, T_, 2, N), negative_x(x.data(), -1, T_, 2, N);
  const ms::sequence_view<float> negative_o(o.data(), -1, T_, 2, N);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve(negative_w, negative_w, negative_w, negative_x, negative_x,
                                              ms::state_view<float>(m.data(), -1, 2, N), negative_o, ws),
                       "meta_state::evolve: tensor 'w' has a negative extent [-1,8,2,16]", ms::shape_error);
  auto negative_in = in.all();
  negative_in.r = ms::sequence_view<const float>(in.r.data(), 1, T_, -2, N);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_sequence(negative_in, ms::state_view<const float>(start.data(), 1, 2, N),
                                                       xv, ev, N, ws),
                       "meta_state::encode_sequence: tensor 'r' has a negative extent [1,8,-2,16]", ms::shape_error);
  // Tensors with no data, named (with n < N evolve copied x̃'s first n channels before any check).
  const ms::sequence_view<const float> no_x(nullptr, 1, T_, 2, N), no_e(nullptr, 1, T_, 2, N);
  for (int n : {N, 8}) {
    CAPTURE(n);
    const ms::sequence_view<const float> en(e.data(), 1, T_, 2, n);
    const ms::state_view<float> mn(m.data(), 1, 2, n);
    const ms::sequence_view<float> on(o.data(), 1, T_, 2, n);
    CHECK_THROWS_WITH_AS(ms::meta_state::evolve(in.view(in.w), in.view(in.a), in.view(in.b), en, no_x, mn, on, ws),
                         "meta_state::evolve: tensor 'x' has no data", ms::shape_error);
    CHECK_THROWS_WITH_AS(ms::meta_state::evolve(in.view(in.w), in.view(in.a), in.view(in.b),
                                                ms::sequence_view<const float>(nullptr, 1, T_, 2, n), xv, mn, on, ws),
                         "meta_state::evolve: tensor 'e' has no data", ms::shape_error);
  }
  const ms::sequence_view<const float> x1(x.data(), 1, 1, 2, N), no_x1(nullptr, 1, 1, 2, N);
  const ms::sequence_view<float> e1(e.data(), 1, 1, 2, N);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode(ms::state_view<const float>(start.data(), 1, 2, N), no_x1, e1, N),
                       "meta_state::encode: tensor 'x' has no data", ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode(ms::state_view<const float>(nullptr, 1, 2, N), x1, e1, N),
                       "meta_state::encode: tensor 'state' has no data", ms::shape_error);
#if METASTATE_VALIDATE_VALUES
  // Values (checked in validating builds) under the caller's names and indices: the inner
  // WKV-7 call would name its own copies ('r' for x̃, an index among n channels).
  std::vector<float> bad_x = x;
  bad_x[2 * N + N - 1] = std::nanf("");  // token 1, head 0, channel 15 (past n = 8)
  const ms::sequence_view<const float> bad_xv(bad_x.data(), 1, T_, 2, N);
  CHECK_THROWS_WITH_AS(ms::meta_state::evolve(in.view(in.w), in.view(in.a), in.view(in.b),
                                              ms::sequence_view<const float>(e.data(), 1, T_, 2, 8), bad_xv,
                                              ms::state_view<float>(m.data(), 1, 2, 8),
                                              ms::sequence_view<float>(o.data(), 1, T_, 2, 8), ws),
                       "meta_state::evolve: tensor 'x' has a non-finite value at flat index 47", ms::value_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_sequence(in.all(), ms::state_view<const float>(start.data(), 1, 2, N),
                                                       bad_xv, ev, N, ws),
                       "meta_state::encode_sequence: tensor 'x' has a non-finite value at flat index 47",
                       ms::value_error);
  CHECK_THROWS_WITH_AS(ms::meta_state::encode_recorded(in.all(), saved, bad_xv, ev, N, ws),
                       "meta_state::encode_recorded: tensor 'x' has a non-finite value at flat index 47",
                       ms::value_error);
#endif
}

TEST_CASE("meta-state models match the fp64 reference (SPEC §4, §7: 1e-5)") {
  struct shape {
    const char* blocks;
    int width, heads, head_size, sse_dim;  // head_size != width / heads: with the projection P
  };
  for (const auto s : {shape{"MM", 128, 4, 32, 0}, shape{"MM", 128, 2, 64, 0}, shape{"FM", 128, 4, 32, 20},
                       shape{"MFM", 128, 2, 64, 40}, shape{"MM", 64, 2, 64, 0}, shape{"FMM", 64, 4, 32, 24}}) {
    CAPTURE(s.blocks);
    CAPTURE(s.head_size);
    CAPTURE(s.sse_dim);
    CAPTURE(s.width / s.heads);
    fixture::temp_dir dir("meta_state");
    const auto config = fixture::small_config(int(std::string(s.blocks).size()), s.width, s.heads, s.head_size, 89,
                                              0, s.blocks, s.sse_dim);
    auto w = mm::initialise(config, 21, mm::init_kind::random);
    mm::save(w, dir / "m.safetensors");
    const auto file = ms::io::safetensors_file::open(dir / "m.safetensors");
    const auto loaded = mm::load(file);
    CHECK(loaded.config.projection == (s.head_size != s.width / s.heads));
    const ref_model::rwkv7 reference(file);
    const auto tokens = random_tokens(33, 89, 22);
    auto ref_state = reference.zero_state();
    const auto expected = reference.forward(tokens, ref_state);
    for (int chunk : {1, 8, 64}) {
      CAPTURE(chunk);
      mm::rwkv7_state state(loaded.config, 1);
      CHECK(ref::rms_relative(run(loaded, tokens, state, chunk), expected) <= 1e-5);
      CHECK(ref::rms_relative(flatten(state.ms), flatten(ref_state.ms)) <= 1e-5);
    }
  }
}

TEST_CASE("meta-state step == sequence == prefill-then-continue, for chunks that do not divide T") {
  const auto w = mm::initialise(fixture::small_config(2, 64, 4, 16, 70, 0, "MF", 12), 23, mm::init_kind::random);
  const auto tokens = random_tokens(31, 70, 24);
  mm::rwkv7_state step_state(w.config, 1);
  const auto step = run(w, tokens, step_state, 1);
  for (int chunk : {2, 5, 8, 31, 100}) {
    CAPTURE(chunk);
    mm::rwkv7_state s(w.config, 1);
    CHECK(ref::rms_relative(run(w, tokens, s, chunk), step) <= 1e-6);
    CHECK(ref::rms_relative(flatten(s.ms), flatten(step_state.ms)) <= 1e-6);
  }
  mm::rwkv7_state s(w.config, 1);
  auto logits = run(w, {tokens.begin(), tokens.begin() + 17}, s, 6);
  const auto rest = run(w, {tokens.begin() + 17, tokens.end()}, s, 4);
  logits.insert(logits.end(), rest.begin(), rest.end());
  CHECK(ref::rms_relative(logits, step) <= 1e-6);
}

TEST_CASE("meta-state models are causal: changing token t+1 leaves outputs up to t unchanged") {
  const auto w = mm::initialise(fixture::small_config(2, 64, 4, 16, 70, 0, "MM"), 25, mm::init_kind::random);
  auto tokens = random_tokens(20, 70, 26);
  mm::rwkv7_state a(w.config, 1), b(w.config, 1);
  const auto before = run(w, tokens, a, 8);
  tokens[12] = (tokens[12] + 1) % 70;
  const auto after = run(w, tokens, b, 8);
  CHECK(std::equal(before.begin(), before.begin() + 12 * 70, after.begin()));
  CHECK(ref::rms_relative(std::vector<float>(after.begin() + 12 * 70, after.end()),
                          std::vector<float>(before.begin() + 12 * 70, before.end())) > 1e-3);
}

TEST_CASE("meta-state batch rows are isolated") {
  const auto w = mm::initialise(fixture::small_config(2, 64, 4, 16, 70, 0, "FM"), 27, mm::init_kind::random);
  const int B = 3, T = 13;
  const auto tokens = random_tokens(B * T, 70, 28);
  mm::rwkv7_state batch(w.config, B);
  const auto together = run(w, tokens, batch, 5);
  for (int b = 0; b < B; ++b) {
    mm::rwkv7_state single(w.config, 1);
    const auto alone = run(w, {tokens.begin() + b * T, tokens.begin() + (b + 1) * T}, single, 5);
    CHECK(ref::rms_relative(std::vector<float>(together.begin() + b * T * 70, together.begin() + (b + 1) * T * 70),
                            alone) <= 1e-6);
  }
}

TEST_CASE("meta-state stays finite and bounded over 100 000 tokens") {
  const auto w = mm::initialise(fixture::small_config(1, 32, 2, 16, 20, 0, "M"), 29, mm::init_kind::random);
  mm::rwkv7_state s(w.config, 1);
  const auto tokens = random_tokens(100000, 20, 30);
  std::vector<float> logits(20);
  mm::forward_options opt;
  opt.chunk = 256;
  opt.logits = mm::logits_for::last_token;
  double largest = 0;
  for (std::size_t t0 = 0; t0 < tokens.size(); t0 += 10000) {
    mm::forward(w, tokens.data() + t0, 10000, s, logits.data(), opt);
    for (float m : s.ms[0]) {
      REQUIRE(std::isfinite(m));
      largest = std::max(largest, double(std::abs(m)));
    }
  }
  for (float x : logits) CHECK(std::isfinite(x));
  MESSAGE("largest |M| entry over 100 000 tokens: " << largest);
  CHECK(largest < 1e6);
}

TEST_CASE("meta-state configurations are checked") {
  auto c = fixture::small_config(1, 64, 4, 16, 20, 0, "M", 17);  // sse_dim > N
  CHECK_THROWS_WITH_AS(mm::initialise(c, 1), doctest::Contains("sse_dim 17 must be in [1, head size 16]"),
                       ms::shape_error);
  c = fixture::small_config(1, 64, 4, 32, 20, 0, "M");
  c.projection = false;  // N != C/H needs P
  CHECK_THROWS_WITH_AS(mm::initialise(c, 1), doctest::Contains("have no 'ms.proj'"), ms::shape_error);
}
