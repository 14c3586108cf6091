// Runs the library's WKV-7 and Meta-State ops on a ref::wkv_problem converted to a storage type.
#pragma once

#include <limits>

#include <metastate/meta_state/meta_state.hpp>
#include <metastate/wkv/wkv7.hpp>

#include "reference.hpp"

namespace harness {

namespace ms = metastate;

template <class T>
std::vector<T> convert(const std::vector<double>& x) {
  std::vector<T> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = static_cast<T>(x[i]);
  return out;
}

template <class T>
std::vector<double> widen(const std::vector<T>& x) {
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = static_cast<double>(x[i]);
  return out;
}

/// The problem's inputs stored as T, with views over them.
template <class T>
struct stored_inputs {
  using A = ms::accum_t<T>;
  const ref::wkv_problem& p;
  std::vector<T> r, w, k, v, a, b;
  explicit stored_inputs(const ref::wkv_problem& prob)
      : p(prob), r(convert<T>(p.r)), w(convert<T>(p.w)), k(convert<T>(p.k)), v(convert<T>(p.v)),
        a(convert<T>(p.a)), b(convert<T>(p.b)) {}
  ms::sequence_view<const T> view(const std::vector<T>& x, int t0 = 0, int tokens = -1) const {
    // Only whole-sequence views or B == 1 slices are contiguous.
    const int T_ = tokens < 0 ? p.T : tokens;
    return {x.data() + std::size_t(t0) * p.H * p.N, p.B, T_, p.H, p.N};
  }
  ms::wkv7::inputs<T> all(int t0 = 0, int tokens = -1) const {
    return {view(r, t0, tokens), view(w, t0, tokens), view(k, t0, tokens),
            view(v, t0, tokens), view(a, t0, tokens), view(b, t0, tokens)};
  }
};

struct result {
  std::vector<double> y, state;
};

/// Runs `sequence` over the whole problem with head size template argument N.
template <int N, class Backend, class T>
result run_sequence(const ref::wkv_problem& p, const ms::wkv7::options& opt = {}) {
  using A = ms::accum_t<T>;
  stored_inputs<T> in(p);
  std::vector<T> y(p.seq_size());
  std::vector<A> state = convert<A>(p.s0);
  ms::wkv7::sequence<N, Backend>(in.all(), ms::state_view<A>(state.data(), p.B, p.H, p.N),
                                 ms::sequence_view<T>(y.data(), p.B, p.T, p.H, p.N), opt);
  return {widen(y), widen(state)};
}

/// x̃ [B,T,H,N] and M_0 [B,H,n,n] for a Meta-State op on `p`: uniform in (-1, 1) and (-0.5, 0.5).
struct meta_state_inputs {
  std::vector<double> x, m0;
  int n;
};
inline meta_state_inputs random_meta_state(const ref::wkv_problem& p, int n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  meta_state_inputs in{std::vector<double>(p.seq_size()), std::vector<double>(std::size_t(p.B) * p.H * n * n), n};
  for (auto& x : in.x) x = uni(gen);
  for (auto& m : in.m0) m = 0.5 * uni(gen);
  return in;
}

/// The encoder then `evolve`, from S_0 = p.s0: o [B,T,H,n] and M_T. The encoder is
/// `encode_sequence` (the replay), or with `every` > 0 `encode_recorded` from what a
/// `wkv7::sequence` call recorded every `every` tokens; `fused` (with `every` > 0):
/// `evolve_recorded` instead of both. `threads`: 0 = OpenMP's default; `decay`: what p.w
/// holds (every op is told).
template <int N, class Backend, class T>
result run_meta_state(const ref::wkv_problem& p, const meta_state_inputs& ms_in, int every = 0, int threads = 0,
                      ms::wkv7::decay_input decay = ms::wkv7::decay_input::w, bool fused = false) {
  using A = ms::accum_t<T>;
  const int n = ms_in.n;
  stored_inputs<T> in(p);
  const std::vector<T> x = convert<T>(ms_in.x);
  const std::vector<A> start = convert<A>(p.s0);
  std::vector<A> m = convert<A>(ms_in.m0);
  std::vector<T> e(p.seq_size() / p.N * n), o(e.size());
  ms::meta_state::workspace<T> ws;
  ms::wkv7::options opt;
  opt.exec.threads = threads;
  opt.decay = decay;
  const ms::sequence_view<const T> xv = in.view(x);
  const ms::state_view<const A> start_view(start.data(), p.B, p.H, p.N);
  const ms::sequence_view<T> e_view(e.data(), p.B, p.T, p.H, n);
  if (every > 0) {
    std::vector<A> state = start;
    std::vector<T> y(p.seq_size());
    ms::wkv7::record<A> saved(every);
    // The encoder reuses its scratch without clearing it: poisoned (more than any case here
    // uses), any value it reads before writing shows in e or o.
    ws.encoder.assign(std::size_t(1) << 20, std::numeric_limits<A>::quiet_NaN());
    ms::wkv7::sequence<N, Backend>(in.all(), ms::state_view<A>(state.data(), p.B, p.H, p.N),
                                   ms::sequence_view<T>(y.data(), p.B, p.T, p.H, p.N), opt, saved);
    if (fused) {
      const ms::state_view<A> mv(m.data(), p.B, p.H, n);
      const ms::sequence_view<T> ov(o.data(), p.B, p.T, p.H, n);
      ms::meta_state::evolve_recorded(in.all(), saved, xv, mv, ov, n, ws, opt);
      return {widen(o), widen(m)};
    }
    ms::meta_state::encode_recorded(in.all(), saved, xv, e_view, n, ws, opt);
  } else {
    ms::meta_state::encode_sequence<N, Backend>(in.all(), start_view, xv, e_view, n, ws, opt);
  }
  const ms::sequence_view<const T> ev(e.data(), p.B, p.T, p.H, n);
  const ms::state_view<A> mv(m.data(), p.B, p.H, n);
  const ms::sequence_view<T> ov(o.data(), p.B, p.T, p.H, n);
  if (n == N)
    ms::meta_state::evolve<N, Backend>(in.view(in.w), in.view(in.a), in.view(in.b), ev, xv, mv, ov, ws, opt);
  else
    ms::meta_state::evolve<ms::dynamic, Backend>(in.view(in.w), in.view(in.a), in.view(in.b), ev, xv, mv, ov, ws,
                                                 opt);
  return {widen(o), widen(m)};
}

}  // namespace harness
