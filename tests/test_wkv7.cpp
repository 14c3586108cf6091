// WKV-7 op: every backend against the fp64 reference, and the op's algebraic properties.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>

#include "wkv_harness.hpp"

namespace ms = metastate;
using harness::run_sequence;
using ms::backend::eigen;
using ms::backend::scalar;
using simd = ms::backend::simd<>;
// The 8-lane kernels: head sizes that are not a multiple of 16 run on them where the default
// is 16-lane AVX-512, and they are the default elsewhere.
using simd8 = ms::backend::simd<ms::backend::narrow_simd_arch>;

namespace {

template <int N, class Backend, class T>
void check_against_reference(int B, int T_, int H, double budget, std::uint64_t seed) {
  const auto p = ref::random_problem(B, T_, H, N, seed);
  std::vector<double> ref_state = p.s0;
  const auto ref_y = ref::wkv7(p, ref_state);
  for (bool dynamic_n : {false, true}) {
    CAPTURE(N);
    CAPTURE(B);
    CAPTURE(T_);
    CAPTURE(dynamic_n);
    const auto got = dynamic_n ? run_sequence<ms::dynamic, Backend, T>(p) : run_sequence<N, Backend, T>(p);
    CHECK(ref::rms_relative(got.y, ref_y) <= budget);
    CHECK(ref::rms_relative(got.state, ref_state) <= budget);
  }
}

template <class Backend, class T, int... Ns>
void check_head_sizes(double budget) {
  std::uint64_t seed = 1;
  for (int B : {1, 3})
    for (int T_ : {1, 17, 200}) (check_against_reference<Ns, Backend, T>(B, T_, 2, budget, seed++), ...);
}

}  // namespace

TEST_CASE_TEMPLATE("wkv7 sequence matches the fp64 reference (f32, SPEC §7: 1e-6)", Backend, scalar, eigen,
                   simd, simd8) {
  check_head_sizes<Backend, float, 16, 24, 32, 64, 128>(1e-6);
}

TEST_CASE_TEMPLATE("wkv7 with double storage matches the fp64 reference to 1e-12", Backend, scalar, eigen,
                   simd, simd8) {
  check_head_sizes<Backend, double, 24, 64>(1e-12);
}

TEST_CASE_TEMPLATE("wkv7 with half and bfloat16 storage stays within 1e-2", Backend, scalar, eigen, simd, simd8) {
  // The reference runs on the same rounded inputs, so the budget covers fp32 accumulation
  // and the rounding of y; the state is fp32.
  for (int T_ : {17, 200}) {
    auto p = ref::random_problem(2, T_, 3, 32, 7);
    auto round_all = [&](auto tag) {
      using T = decltype(tag);
      auto q = p;
      for (auto* x : {&q.r, &q.w, &q.k, &q.v, &q.a, &q.b}) *x = harness::widen(harness::convert<T>(*x));
      std::vector<double> state = q.s0;
      const auto y = ref::wkv7(q, state);
      const auto got = run_sequence<32, Backend, T>(q);
      CHECK(ref::rms_relative(got.y, y) <= 1e-2);
      CHECK(ref::rms_relative(got.state, state) <= 1e-2);
    };
    round_all(Eigen::half{});
    round_all(Eigen::bfloat16{});
  }
}

TEST_CASE_TEMPLATE("wkv7 sequence equals repeated step", Backend, scalar, eigen, simd, simd8) {
  const auto p = ref::random_problem(1, 23, 3, 24, 11);
  const auto whole = run_sequence<24, Backend, float>(p);
  harness::stored_inputs<float> in(p);
  std::vector<float> y(p.seq_size()), state = harness::convert<float>(p.s0);
  for (int t = 0; t < p.T; ++t)
    ms::wkv7::step<24, Backend>(in.all(t, 1), ms::state_view<float>(state.data(), 1, p.H, p.N),
                                ms::sequence_view<float>(y.data() + std::size_t(t) * p.H * p.N, 1, 1, p.H, p.N));
  // Step and sequence may sum in different orders (simd: row kernel vs transposed kernel).
  CHECK(ref::rms_relative(y, whole.y) <= 1e-6);
  CHECK(ref::rms_relative(state, whole.state) <= 1e-6);
}

TEST_CASE_TEMPLATE("wkv7 sequence split in two with the state carried equals one call", Backend, scalar, eigen,
                   simd, simd8) {
  const auto p = ref::random_problem(1, 41, 2, 32, 12);
  const auto whole = run_sequence<32, Backend, float>(p);
  harness::stored_inputs<float> in(p);
  std::vector<float> y(p.seq_size()), state = harness::convert<float>(p.s0);
  const ms::state_view<float> sv(state.data(), 1, p.H, p.N);
  for (auto [t0, len] : {std::pair{0, 19}, std::pair{19, 22}})
    ms::wkv7::sequence<32, Backend>(in.all(t0, len), sv,
                                    ms::sequence_view<float>(y.data() + std::size_t(t0) * p.H * p.N, 1, len, p.H, p.N));
  CHECK(ref::rms_relative(y, whole.y) <= 1e-6);
  CHECK(ref::rms_relative(state, whole.state) <= 1e-6);
}

TEST_CASE_TEMPLATE("wkv7 segment composition: S_end = S_start P + S_end(S_start = 0)", Backend, scalar, eigen,
                   simd, simd8) {
  const int N = 24;
  auto p = ref::random_problem(1, 9, 1, N, 13);
  // P = prod_t (diag(w_t) + a_t b_tᵀ) in time order, in fp64.
  std::vector<double> P(N * N, 0.0), next(N * N);
  for (int i = 0; i < N; ++i) P[i * N + i] = 1;
  for (int t = 0; t < p.T; ++t) {
    const std::size_t o = p.at(0, t, 0);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j) {
        double acc = 0;
        for (int m = 0; m < N; ++m) acc += P[i * N + m] * ((m == j ? p.w[o + j] : 0.0) + p.a[o + m] * p.b[o + j]);
        next[i * N + j] = acc;
      }
    P.swap(next);
  }
  const auto with_start = run_sequence<N, Backend, float>(p);
  auto zero_start = p;
  std::fill(zero_start.s0.begin(), zero_start.s0.end(), 0.0);
  const auto from_zero = run_sequence<N, Backend, float>(zero_start);
  std::vector<double> composed(N * N);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) {
      double acc = from_zero.state[i * N + j];
      for (int m = 0; m < N; ++m) acc += p.s0[i * N + m] * P[m * N + j];
      composed[i * N + j] = acc;
    }
  CHECK(ref::rms_relative(with_start.state, composed) <= 1e-6);
}

TEST_CASE_TEMPLATE("wkv7 does not drop the removal term: zeroing a and b changes the output", Backend, scalar,
                   eigen, simd, simd8) {
  const auto p = ref::random_problem(1, 17, 2, 32, 14);
  auto no_removal = p;
  std::fill(no_removal.a.begin(), no_removal.a.end(), 0.0);
  std::fill(no_removal.b.begin(), no_removal.b.end(), 0.0);
  const auto with = run_sequence<32, Backend, float>(p);
  const auto without = run_sequence<32, Backend, float>(no_removal);
  CHECK(ref::rms_relative(without.y, with.y) > 1e-2);
  std::vector<double> state = no_removal.s0;
  CHECK(ref::rms_relative(without.y, ref::wkv7(no_removal, state)) <= 1e-6);
}

TEST_CASE_TEMPLATE("wkv7 gives identical results on 1 and 2 threads", Backend, scalar, eigen, simd, simd8) {
  // B*H = 1 makes two threads split the rows of one state; B*H = 6 splits the heads. The
  // sizes are above the library's one-thread threshold (2^18 state-element updates).
  for (auto [B, H] : {std::pair{1, 1}, std::pair{2, 3}}) {
    const auto p = ref::random_problem(B, 97, H, 64, 15);
    ms::wkv7::options one, two;
    one.exec.threads = 1;
    two.exec.threads = 2;
    const auto a = run_sequence<64, Backend, float>(p, one);
    const auto b = run_sequence<64, Backend, float>(p, two);
    CHECK(a.y == b.y);
    CHECK(a.state == b.state);
  }
}

namespace {

/// y, the final state and the record (every token) of a call on `threads` threads.
struct threaded_run {
  std::vector<float> y, state, removal, states;
};

template <int N, class Backend>
threaded_run run_on_threads(const ref::wkv_problem& p, int threads) {
  const harness::stored_inputs<float> in(p);
  ms::wkv7::options opt;
  opt.exec.threads = threads;
  ms::wkv7::record<float> saved(1);
  threaded_run out{std::vector<float>(p.seq_size()), harness::convert<float>(p.s0), {}, {}};
  ms::wkv7::sequence<N, Backend>(in.all(), ms::state_view<float>(out.state.data(), p.B, p.H, N),
                                 ms::sequence_view<float>(out.y.data(), p.B, p.T, p.H, N), opt, saved);
  out.removal.assign(saved.removal(), saved.removal() + p.seq_size());
  out.states.assign(saved.states(), saved.states() + ms::wkv7::recorded_states(p.T, 1) * p.state_size());
  return out;
}

template <int N, class Backend>
void check_thread_counts(int B, int T_, int H) {
  const auto p = ref::random_problem(B, T_, H, N, 29);
  const auto one = run_on_threads<N, Backend>(p, 1);
  for (int threads = 3; threads <= 8; ++threads) {
    CAPTURE(N);
    CAPTURE(T_);
    CAPTURE(H);
    CAPTURE(threads);
    const auto many = run_on_threads<N, Backend>(p, threads);
    CHECK(many.y == one.y);
    CHECK(many.state == one.state);
    CHECK(many.removal == one.removal);
    CHECK(many.states == one.states);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("wkv7 gives one thread's results on 3 to 8 threads, however the rows divide", Backend, scalar,
                   eigen, simd, simd8) {
  // Fewer (batch, head) items than threads: the threads split each state's rows in parts of
  // whole row groups (8 groups of 8 rows for 6 threads: 4 parts of 2 groups, not 6 parts of
  // which the last two would hold no rows). T = 3 runs simd's row kernel.
  check_thread_counts<64, Backend>(1, 64, 1);
  check_thread_counts<128, Backend>(1, 3, 6);
  check_thread_counts<128, Backend>(1, 40, 2);
}

TEST_CASE_TEMPLATE("wkv7 sequence records its removals and every few states (for the Meta-State encoder)",
                   Backend, scalar, eigen, simd, simd8) {
  // B*H = 1 on two threads splits each state's rows; T = 3 is short enough for simd's row kernel.
  // One record per `every` serves the calls: it grows for the second and is reused, larger
  // than needed, by the others. With whole heads per thread the simd kernel writes the
  // recorded states from its sweep (every = 1: each token reads the state from one slot and
  // writes it into the next); y and the state must come out as without a record.
  for (int every : {1, 8, 64}) {
    ms::wkv7::record<float> saved(every);
    for (auto [B, T_, H, threads] :
         {std::tuple{1, 70, 1, 2}, std::tuple{2, 33, 3, 1}, std::tuple{1, 3, 2, 1}, std::tuple{2, 33, 3, 2}}) {
      CAPTURE(B);
      CAPTURE(T_);
      CAPTURE(threads);
      CAPTURE(every);
      const auto p = ref::random_problem(B, T_, H, 64, 19);
      // The reference: u_t = S_{t-1} a_t, and S before tokens 0, every, 2 every, ...
      std::vector<double> removal(p.seq_size()), states, S, u(64);
      for (int c = 0; c * every < T_; ++c)
        for (int bi = 0; bi < B; ++bi)
          for (int h = 0; h < H; ++h) {
            S.assign(p.s0.begin() + (bi * H + h) * 64 * 64, p.s0.begin() + (bi * H + h + 1) * 64 * 64);
            for (int t = 0; t < c * every; ++t) ref::transition(p, p.at(bi, t, h), S.data(), u);
            for (int j = 0; j < 64; ++j)
              for (int i = 0; i < 64; ++i) states.push_back(S[i * 64 + j]);  // transposed
          }
      for (int bi = 0; bi < B; ++bi)
        for (int h = 0; h < H; ++h) {
          S.assign(p.s0.begin() + (bi * H + h) * 64 * 64, p.s0.begin() + (bi * H + h + 1) * 64 * 64);
          for (int t = 0; t < T_; ++t) {
            ref::transition(p, p.at(bi, t, h), S.data(), u);
            std::copy(u.begin(), u.end(), removal.begin() + p.at(bi, t, h));
          }
        }
      REQUIRE(states.size() == std::size_t(ms::wkv7::recorded_states(T_, every)) * p.state_size());
      const harness::stored_inputs<float> in(p);
      std::vector<float> y(p.seq_size()), state = harness::convert<float>(p.s0);
      ms::wkv7::options opt;
      opt.exec.threads = threads;
      std::vector<float> plain_y(y.size()), plain_state = state;
      ms::wkv7::sequence<64, Backend>(in.all(), ms::state_view<float>(state.data(), B, H, 64),
                                      ms::sequence_view<float>(y.data(), B, T_, H, 64), opt, saved);
      ms::wkv7::sequence<64, Backend>(in.all(), ms::state_view<float>(plain_state.data(), B, H, 64),
                                      ms::sequence_view<float>(plain_y.data(), B, T_, H, 64), opt);
      CHECK(y == plain_y);
      CHECK(state == plain_state);
      CHECK(saved.filled());
      CHECK(saved.shape() == std::array<ms::index_t, 4>{B, T_, H, 64});
      const std::vector<float> got_removal(saved.removal(), saved.removal() + removal.size()),
          got_states(saved.states(), saved.states() + states.size());
      CHECK(ref::rms_relative(got_removal, removal) <= 1e-6);
      CHECK(ref::rms_relative(got_states, states) <= 1e-6);
    }
  }
  CHECK_THROWS_WITH_AS(ms::wkv7::record<float>(-1), "wkv7::record: every must be >= 0 (0 records nothing), got -1",
                       ms::shape_error);
}

TEST_CASE("wkv7 simd on inputs larger than the caches matches the reference, split by heads or by rows") {
  // y = 4096 x 3 x 64 floats = 3 MiB: the sequence kernel streams it (non-temporal stores).
  // The inputs (18 MiB) are read token by token; with B = 1 two threads split every head's
  // rows (a split by heads would leave each reading pieces of every row), with B = 2 the
  // batch rows. Either way the results equal one thread's, the record included (the
  // record's states are indexed by head, not by the order the threads take the units in).
  for (int B : {1, 2}) {
    CAPTURE(B);
    const auto p = ref::random_problem(B, 4096 / B, 3, 64, 17);
    std::vector<double> state = p.s0;
    const auto y = ref::wkv7(p, state);
    const harness::stored_inputs<float> in(p);
    std::vector<float> first_y, first_state, first_record;
    for (int threads : {1, 2}) {
      CAPTURE(threads);
      ms::wkv7::options opt;
      opt.exec.threads = threads;
      ms::wkv7::record<float> saved(16);
      std::vector<float> got_y(p.seq_size()), got_state = harness::convert<float>(p.s0);
      ms::wkv7::sequence<64, simd>(in.all(), ms::state_view<float>(got_state.data(), p.B, p.H, 64),
                                   ms::sequence_view<float>(got_y.data(), p.B, p.T, p.H, 64), opt, saved);
      CHECK(ref::rms_relative(harness::widen(got_y), y) <= 1e-6);
      CHECK(ref::rms_relative(harness::widen(got_state), state) <= 1e-6);
      const std::vector<float> record(saved.states(),
                                      saved.states() + ms::wkv7::recorded_states(p.T, 16) * p.state_size());
      if (threads == 1) {
        first_y = got_y, first_state = got_state, first_record = record;
      } else {
        CHECK(got_y == first_y);
        CHECK(got_state == first_state);
        CHECK(record == first_record);
      }
    }
  }
}

TEST_CASE_TEMPLATE("wkv7 log-decay entry point equals the decay entry point", Backend, scalar, eigen, simd, simd8) {
  const auto p = ref::random_problem(1, 17, 2, 32, 16);
  auto logged = p;
  for (auto& w : logged.w) w = std::log(w);
  ms::wkv7::options opt;
  opt.decay = ms::wkv7::decay_input::log_w;
  const auto direct = run_sequence<32, Backend, float>(p);
  const auto via_log = run_sequence<32, Backend, float>(logged, opt);
  CHECK(ref::rms_relative(via_log.y, direct.y) <= 1e-6);
  CHECK(ref::rms_relative(via_log.state, direct.state) <= 1e-6);
}

TEST_CASE("wkv7 rejects bad shapes with a message naming the tensor") {
  const int B = 2, T_ = 3, H = 2, N = 16;
  std::vector<float> buf(std::size_t(B) * T_ * H * N), state(std::size_t(B) * H * N * N), y(buf.size());
  const ms::sequence_view<const float> good(buf.data(), B, T_, H, N), short_k(buf.data(), B, T_ - 1, H, N);
  const ms::wkv7::inputs<float> bad_k{good, good, short_k, good, good, good};
  const ms::state_view<float> sv(state.data(), B, H, N);
  const ms::sequence_view<float> yv(y.data(), B, T_, H, N);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence(bad_k, sv, yv),
                       "wkv7::sequence: tensor 'k' has shape [2,2,2,16], expected [2,3,2,16]", ms::shape_error);
  const ms::wkv7::inputs<float> in{good, good, good, good, good, good};
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence(in, ms::state_view<float>(state.data(), 1, H, N), yv),
                       "wkv7::sequence: tensor 'state' has shape [1,2,16,16], expected [2,2,16,16]", ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence(in, sv, ms::sequence_view<float>(y.data(), B, T_, 1, N)),
                       "wkv7::sequence: tensor 'y' has shape [2,3,1,16], expected [2,3,2,16]", ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence<32>(in, sv, yv),
                       "wkv7::sequence: tensor 'r' has shape [2,3,2,16], expected [2,3,2,32]", ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::wkv7::step(in, sv, yv),
                       "wkv7::step: tensor 'r' has shape [2,3,2,16], expected [2,1,2,16]", ms::shape_error);
  const ms::sequence_view<const float> null_v(nullptr, B, T_, H, N);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence(ms::wkv7::inputs<float>{good, good, good, null_v, good, good}, sv, yv),
                       "wkv7::sequence: tensor 'v' has no data", ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence(in, sv, ms::sequence_view<float>(nullptr, B, T_, H, N)),
                       "wkv7::sequence: 'y' or 'state' has no data", ms::shape_error);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence(in, ms::state_view<float>(nullptr, B, H, N), yv),
                       "wkv7::sequence: 'y' or 'state' has no data", ms::shape_error);
  // Negative extents multiply to a positive size; every view agreeing with r's must not pass.
  const ms::sequence_view<const float> negative(buf.data(), -1, T_, -2, N);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence(ms::wkv7::inputs<float>{negative, negative, negative, negative, negative,
                                                                  negative},
                                          ms::state_view<float>(state.data(), -1, -2, N),
                                          ms::sequence_view<float>(y.data(), -1, T_, -2, N)),
                       "wkv7::sequence: tensor 'r' has a negative extent [-1,3,-2,16]", ms::shape_error);
  ms::wkv7::options opt;
  opt.exec.threads = -2;
  const ms::sequence_view<const float> one(buf.data(), B, 1, H, N);
  CHECK_THROWS_WITH_AS(ms::wkv7::step(ms::wkv7::inputs<float>{one, one, one, one, one, one}, sv,
                                      ms::sequence_view<float>(y.data(), B, 1, H, N), opt),
                       "wkv7::step: exec.threads must be >= 0 (0: OpenMP's default), got -2", ms::value_error);
}

TEST_CASE("wkv7 rejects outputs that share memory with its other tensors, naming both") {
  // Written over an input, the backends and thread counts each computed something else.
  const auto p = ref::random_problem(1, 5, 2, 16, 41);
  const std::size_t seq = p.seq_size(), states = p.state_size();
  // One buffer holding r, w, k, v, a, b, then room for outputs placed anywhere in it.
  std::vector<float> buf(7 * seq + 2 * states);
  for (int i = 0; i < 6; ++i) {
    const std::vector<double>* x[] = {&p.r, &p.w, &p.k, &p.v, &p.a, &p.b};
    std::copy(x[i]->begin(), x[i]->end(), buf.begin() + i * seq);
  }
  auto view = [&](std::size_t offset, int T_) { return ms::sequence_view<const float>(buf.data() + offset, 1, T_, 2, 16); };
  auto out = [&](std::size_t offset, int T_) { return ms::sequence_view<float>(buf.data() + offset, 1, T_, 2, 16); };
  auto inputs = [&](int T_) {
    return ms::wkv7::inputs<float>{view(0, T_), view(seq, T_), view(2 * seq, T_), view(3 * seq, T_),
                                   view(4 * seq, T_), view(5 * seq, T_)};
  };
  std::vector<float> state = harness::convert<float>(p.s0), y(seq);
  const ms::state_view<float> sv(state.data(), 1, 2, 16);
  const std::string tail = "' in memory; the op does not work in place, so outputs need memory of their own";
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence<16>(inputs(5), sv, out(0, 5)),
                       ("wkv7::sequence: tensor 'y' overlaps 'r" + tail).c_str(), ms::overlap_error);
  // A partial overlap: y starts in the middle of k.
  CHECK_THROWS_WITH_AS(ms::wkv7::step<16>(inputs(1), sv, out(2 * seq + 8, 1)),
                       ("wkv7::step: tensor 'y' overlaps 'k" + tail).c_str(), ms::overlap_error);
  const ms::state_view<float> state_over_v(buf.data() + 3 * seq, 1, 2, 16);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence<16>(inputs(5), state_over_v, ms::sequence_view<float>(y.data(), 1, 5, 2, 16)),
                       ("wkv7::sequence: tensor 'state' overlaps 'v" + tail).c_str(), ms::overlap_error);
  CHECK_THROWS_WITH_AS(ms::wkv7::sequence<16>(inputs(5), sv, ms::sequence_view<float>(state.data() + 100, 1, 5, 2, 16)),
                       ("wkv7::sequence: tensor 'y' overlaps 'state" + tail).c_str(), ms::overlap_error);
  // Outputs right after the inputs (touching, not overlapping) run, and give the results of
  // separate buffers; so do inputs that share memory (k and v the same tensor).
  const auto reference = harness::run_sequence<16, ms::backend::default_backend, float>(p);
  CHECK_NOTHROW(ms::wkv7::sequence<16>(inputs(5), sv, out(6 * seq, 5)));
  CHECK(ref::rms_relative(harness::widen(std::vector<float>(buf.begin() + 6 * seq, buf.begin() + 7 * seq)),
                          reference.y) <= 1e-6);
  auto shared = p;
  shared.v = shared.k;
  const auto separate = harness::run_sequence<16, ms::backend::default_backend, float>(shared);
  const auto s0 = harness::convert<float>(p.s0);
  std::copy(s0.begin(), s0.end(), state.begin());  // (sv views state's buffer)
  auto same_kv = inputs(5);
  same_kv.v = same_kv.k;
  CHECK_NOTHROW(ms::wkv7::sequence<16>(same_kv, sv, ms::sequence_view<float>(y.data(), 1, 5, 2, 16)));
  CHECK(ref::rms_relative(harness::widen(y), separate.y) == 0);
}

TEST_CASE("wkv7 validate_values rejects decays outside (0, 1] and non-finite inputs") {
  auto p = ref::random_problem(1, 2, 1, 8, 17);
  harness::stored_inputs<float> in(p);
  CHECK_NOTHROW(ms::wkv7::validate_values(in.all()));
  in.w[5] = 1.5f;
  CHECK_THROWS_WITH_AS(ms::wkv7::validate_values(in.all()), doctest::Contains("outside (0, 1]"), ms::value_error);
  CHECK_THROWS_WITH_AS(ms::wkv7::validate_values(in.all(), ms::wkv7::decay_input::log_w),
                       doctest::Contains("outside (-inf, 0]"), ms::value_error);
  in.w[5] = 0.9f;
  in.k[3] = std::nanf("");
  CHECK_THROWS_WITH_AS(ms::wkv7::validate_values(in.all()), doctest::Contains("tensor 'k' has a non-finite value"),
                       ms::value_error);
  in.k[3] = 0.5f;
  std::vector<float> state = harness::convert<float>(p.s0);
  const ms::state_view<const float> sv(state.data(), p.B, p.H, p.N);
  CHECK_NOTHROW(ms::wkv7::validate_values(in.all(), sv));
  state[63] = INFINITY;
  CHECK_THROWS_WITH_AS(ms::wkv7::validate_values(in.all(), sv),
                       doctest::Contains("tensor 'state' has a non-finite value at flat index 63"), ms::value_error);
}

TEST_CASE("aligned_vector and the simd kernel's per-thread working copies are cache-line aligned") {
  // The simd kernels' speed depends on it (docs/PERFORMANCE.md); nothing else would notice.
  for (std::size_t size : {1, 3, 16, 1000, 100000}) {
    CAPTURE(size);
    ms::aligned_vector<float> f(size);
    ms::aligned_vector<double> d(size);
    CHECK(reinterpret_cast<std::uintptr_t>(f.data()) % ms::cache_line_bytes == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(d.data()) % ms::cache_line_bytes == 0);
    f.resize(3 * size + 5);  // reallocated: still aligned
    CHECK(reinterpret_cast<std::uintptr_t>(f.data()) % ms::cache_line_bytes == 0);
    // The per-thread buffer grows between calls (a larger head count, a longer record).
    CHECK(reinterpret_cast<std::uintptr_t>(ms::wkv7::detail::thread_arena<float>(size * 7)) % ms::cache_line_bytes ==
          0);
  }
  ms::aligned_vector<int> v{1, 2, 3};
  v.resize(1000, 9);
  CHECK(v[0] == 1);
  CHECK(v[2] == 3);
  CHECK(v[999] == 9);
}

TEST_CASE_TEMPLATE("the state copies' transpose equals the plain transpose (16 x 16 shuffle tiles and fallback)", S,
                   float, double) {
  // The simd kernel's working copies, the records and the encoder are made with it: whole
  // 16 x 16 tiles (float with AVX-512) or the plain loop (any other shape or type). Strides
  // wider than the block, and a sentinel on everything the destination block does not cover.
  const std::pair<int, int> shapes[] = {{16, 16}, {32, 64}, {64, 32}, {48, 80}, {24, 40}, {16, 8}, {5, 7}};
  for (const auto& [rows, columns] : shapes) {
    CAPTURE(rows);
    CAPTURE(columns);
    const ms::index_t src_stride = columns + 16, dst_stride = rows + 32;
    std::vector<S> src(static_cast<std::size_t>(rows * src_stride));
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<S>(i % 977) - S(300);
    const S sentinel = S(-12345);
    std::vector<S> dst(static_cast<std::size_t>(columns * dst_stride), sentinel);
    ms::wkv7::detail::transpose(src.data(), src_stride, rows, columns, dst.data(), dst_stride);
    int wrong = 0;
    for (ms::index_t c = 0; c < columns; ++c)
      for (ms::index_t r = 0; r < dst_stride; ++r)
        wrong += dst[c * dst_stride + r] != (r < rows ? src[r * src_stride + c] : sentinel);
    CHECK(wrong == 0);
  }
}
