// Plain fp64 references written from SPEC.md, independent of the library's kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace ref {

/// One WKV-7 problem in fp64: inputs [B,T,H,N], initial state [B,H,N,N].
struct wkv_problem {
  int B, T, H, N;
  std::vector<double> r, w, k, v, a, b, s0;
  std::size_t seq_size() const { return std::size_t(B) * T * H * N; }
  std::size_t state_size() const { return std::size_t(B) * H * N * N; }
  std::size_t at(int bi, int t, int h) const { return ((std::size_t(bi) * T + t) * H + h) * N; }
};

/// Random inputs shaped like RWKV-7's: w = exp(-e^-0.5 sigmoid(d)) in (0.545, 1),
/// a = -k̂, b = k̂ * alpha with unit k̂ per head, and a non-zero initial state.
inline wkv_problem random_problem(int B, int T, int H, int N, std::uint64_t seed) {
  wkv_problem p{B, T, H, N, {}, {}, {}, {}, {}, {}, {}};
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  const std::size_t n = p.seq_size();
  for (auto* x : {&p.r, &p.w, &p.k, &p.v, &p.a, &p.b}) x->resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    p.r[i] = uni(gen);
    p.k[i] = uni(gen);
    p.v[i] = uni(gen);
    p.w[i] = std::exp(-std::exp(-0.5) / (1.0 + std::exp(-2.0 * normal(gen))));
  }
  for (int bi = 0; bi < B; ++bi)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h) {
        const std::size_t o = p.at(bi, t, h);
        double norm = 0;
        std::vector<double> kappa(N);
        for (int j = 0; j < N; ++j) norm += (kappa[j] = normal(gen)) * kappa[j];
        norm = std::sqrt(norm);
        for (int j = 0; j < N; ++j) {
          const double alpha = 1.0 / (1.0 + std::exp(-normal(gen)));
          p.a[o + j] = -kappa[j] / norm;
          p.b[o + j] = kappa[j] / norm * alpha;
        }
      }
  p.s0.resize(p.state_size());
  for (auto& s : p.s0) s = 0.5 * uni(gen);
  return p;
}

/// SPEC §2's transition of one N x N state by the token at offset `o` of `p`, literally:
/// u = S a (old state); S = S diag(w) + u bᵀ + v kᵀ. `u` is scratch of N.
inline void transition(const wkv_problem& p, std::size_t o, double* S, std::vector<double>& u) {
  const int N = p.N;
  for (int i = 0; i < N; ++i) {
    u[i] = 0;
    for (int j = 0; j < N; ++j) u[i] += S[i * N + j] * p.a[o + j];
  }
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) S[i * N + j] = S[i * N + j] * p.w[o + j] + u[i] * p.b[o + j] + p.v[o + i] * p.k[o + j];
}

/// SPEC §2: the transition, then y = S r. Returns y [B,T,H,N]; `state` holds S_0 on entry
/// and S_T on return.
inline std::vector<double> wkv7(const wkv_problem& p, std::vector<double>& state) {
  const int N = p.N;
  std::vector<double> y(p.seq_size()), u(N);
  for (int bi = 0; bi < p.B; ++bi)
    for (int h = 0; h < p.H; ++h) {
      double* S = state.data() + (std::size_t(bi) * p.H + h) * N * N;
      for (int t = 0; t < p.T; ++t) {
        const std::size_t o = p.at(bi, t, h);
        transition(p, o, S, u);
        for (int i = 0; i < N; ++i) {
          double acc = 0;
          for (int j = 0; j < N; ++j) acc += S[i * N + j] * p.r[o + j];
          y[o + i] = acc;
        }
      }
    }
  return y;
}

/// SPEC §4 at the op level, literally: the WKV state S_t of `p` from p.s0 (r unused), then
/// e_t = S_t[:n,:n] x̃_t[:n];  M_t = M_{t-1} diag(w_t[:n]) + (M_{t-1} a_t[:n]) b_t[:n]ᵀ + e_t e_tᵀ;
/// o_t = M_t x̃_t[:n]. `x` is x̃ [B,T,H,N]; `m` [B,H,n,n] holds M_0 on entry and M_T on return.
/// Returns o [B,T,H,n].
inline std::vector<double> meta_state(const wkv_problem& p, const std::vector<double>& x, int n,
                                      std::vector<double>& m) {
  const int N = p.N;
  std::vector<double> o(std::size_t(p.B) * p.T * p.H * n), S(std::size_t(N) * N), u(N), e(n), mu(n);
  for (int bi = 0; bi < p.B; ++bi)
    for (int h = 0; h < p.H; ++h) {
      const std::size_t bh = std::size_t(bi) * p.H + h;
      std::copy_n(p.s0.begin() + bh * N * N, N * N, S.begin());
      double* M = m.data() + bh * n * n;
      for (int t = 0; t < p.T; ++t) {
        const std::size_t at = p.at(bi, t, h);
        transition(p, at, S.data(), u);
        for (int i = 0; i < n; ++i) {
          e[i] = 0;
          for (int j = 0; j < n; ++j) e[i] += S[i * N + j] * x[at + j];
          mu[i] = 0;
          for (int j = 0; j < n; ++j) mu[i] += M[i * n + j] * p.a[at + j];
        }
        const std::size_t out = ((std::size_t(bi) * p.T + t) * p.H + h) * n;
        for (int i = 0; i < n; ++i) {
          o[out + i] = 0;
          for (int j = 0; j < n; ++j) {
            M[i * n + j] = M[i * n + j] * p.w[at + j] + mu[i] * p.b[at + j] + e[i] * e[j];
            o[out + i] += M[i * n + j] * x[at + j];
          }
        }
      }
    }
  return o;
}

/// ‖x − ref‖ / ‖ref‖.
template <class X, class AX, class R, class AR>
double rms_relative(const std::vector<X, AX>& x, const std::vector<R, AR>& reference) {
  if (x.size() != reference.size()) return INFINITY;
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(reference[i]);
    diff += d * d;
    norm += static_cast<double>(reference[i]) * static_cast<double>(reference[i]);
  }
  return std::sqrt(diff / norm);
}

}  // namespace ref
