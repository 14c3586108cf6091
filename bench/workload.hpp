// The inputs every op benchmark runs on: one RWKV-7-shaped random [1,T,H,N] sequence.
#pragma once

#include <metastate/metastate.hpp>

#include <cmath>
#include <random>
#include <vector>

namespace bench {

namespace ms = metastate;

/// RWKV-7-shaped random inputs for one [1,T,H,N] sequence, held as float in cache-line
/// aligned buffers (as the README advises callers of the `simd` backend).
struct workload {
  int T, H, N;
  ms::aligned_vector<float> r, w, k, v, a, b, y, state;
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
  ms::sequence_view<const float> view(const ms::aligned_vector<float>& x, int tokens) const {
    return {x.data(), 1, tokens, H, N};
  }
  ms::wkv7::inputs<float> inputs(int tokens) const {
    return {view(r, tokens), view(w, tokens), view(k, tokens), view(v, tokens), view(a, tokens), view(b, tokens)};
  }
};

}  // namespace bench
