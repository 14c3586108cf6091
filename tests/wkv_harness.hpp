// Runs the library's WKV-7 op on a ref::wkv_problem converted to a storage type.
#pragma once

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

}  // namespace harness
