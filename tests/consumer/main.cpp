// One WKV-7 step through the installed or embedded library.
#include <metastate/metastate.hpp>

#include <cstdio>
#include <vector>

int main() {
  namespace ms = metastate;
  const int N = 8;
  std::vector<float> ones(N, 1.0f), decay(N, 0.5f), zeros(N, 0.0f), state(N * N, 0.0f), y(N);
  const ms::sequence_view<const float> one(ones.data(), 1, 1, 1, N), w(decay.data(), 1, 1, 1, N),
      zero(zeros.data(), 1, 1, 1, N);
  ms::wkv7::step<N>(ms::wkv7::inputs<float>{one, w, one, one, zero, zero}, ms::state_view<float>(state.data(), 1, 1, N),
                    ms::sequence_view<float>(y.data(), 1, 1, 1, N));
  std::printf("metastate %s: y[0] = %g\n", ms::version_string, y[0]);
  return y[0] == 8.0f ? 0 : 1;  // S = v kᵀ = all ones, y = S r = N
}
