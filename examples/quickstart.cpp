// Quickstart: run a WKV-7 sequence on one head, then continue it token by token.
#include <metastate/metastate.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  namespace ms = metastate;
  constexpr int N = 8, T = 5;  // head size, tokens
  std::vector<float> r(T * N), w(T * N), k(T * N), v(T * N), a(T * N), b(T * N), y(T * N);
  for (int i = 0; i < T * N; ++i) {
    r[i] = std::sin(0.3f * i), k[i] = std::cos(0.2f * i), v[i] = 0.1f * (i % N);
    w[i] = 0.9f, a[i] = -0.25f, b[i] = 0.1f;
  }
  std::vector<float> state(N * N, 0.0f);  // S_0 = 0, [B=1, H=1, N, N]
  auto view = [&](std::vector<float>& x, int t0, int len) { return ms::sequence_view<float>(&x[t0 * N], 1, len, 1, N); };
  const ms::state_view<float> S(state.data(), 1, 1, N);

  // The first T-1 tokens as one sequence, then the last one with `step`: the state carries over.
  ms::wkv7::inputs<float> first{view(r, 0, T - 1), view(w, 0, T - 1), view(k, 0, T - 1),
                                view(v, 0, T - 1), view(a, 0, T - 1), view(b, 0, T - 1)};
  ms::wkv7::sequence<N>(first, S, view(y, 0, T - 1));
  ms::wkv7::inputs<float> last{view(r, T - 1, 1), view(w, T - 1, 1), view(k, T - 1, 1),
                               view(v, T - 1, 1), view(a, T - 1, 1), view(b, T - 1, 1)};
  ms::wkv7::step<N>(last, S, view(y, T - 1, 1));

  for (int t = 0; t < T; ++t) std::printf("y[%d][0..2] = %+.5f %+.5f %+.5f\n", t, y[t * N], y[t * N + 1], y[t * N + 2]);
  std::printf("|S_T| = %.5f\n", std::sqrt([&] { double s = 0; for (float x : state) s += x * x; return s; }()));
}
