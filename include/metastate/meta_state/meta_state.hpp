// Meta-State ops (SPEC §4): the Self-State Encoder, and the Meta-State evolution with its readout.
#pragma once

#include <Eigen/Core>
#include <string>
#include <vector>

#include "metastate/core/backend.hpp"
#include "metastate/core/error.hpp"
#include "metastate/core/head_size.hpp"
#include "metastate/core/scalar_traits.hpp"
#include "metastate/core/views.hpp"
#include "metastate/wkv/wkv7.hpp"

/// Per (batch, head), with `S_t` the layer's WKV state after token t, `x̃_t` the projected
/// input and `n = sse_dim ≤ N`:
///   e_t = S_t[:n,:n] x̃_t[:n]                                   (encoder: the state is the weight)
///   M_t = M_{t-1} diag(w_t[:n]) + (M_{t-1} a_t[:n]) b_t[:n]ᵀ + e_t e_tᵀ   (evolution: WKV-7 with v = k = e)
///   o_t = M_t x̃_t[:n]                                          (readout)
namespace metastate::meta_state {

/// Scratch reused across calls (sizes only grow): no allocation once warmed up.
template <class T>
struct workspace {
  std::vector<T> query, replay_y, w, a, b, x;
  std::vector<accum_t<T>> replay_state;
};

namespace detail {

inline void check_sse_dim(const char* context, int n, index_t N) {
  if (n <= 0 || n > N)
    throw shape_error(std::string(context) + ": sse_dim " + std::to_string(n) + " must be in [1, head size " +
                      std::to_string(N) + "]");
}

/// dst [B,T,H,n] = src[..., :n] (dst reuses `buffer`).
template <class T>
sequence_view<const T> leading(sequence_view<const T> src, int n, std::vector<T>& buffer) {
  if (n == src.head_size()) return src;
  buffer.resize(static_cast<std::size_t>(src.size() / src.head_size() * n));
  const index_t rows = src.size() / src.head_size();
  for (index_t i = 0; i < rows; ++i)
    std::copy_n(src.data() + i * src.head_size(), n, buffer.data() + i * n);
  return {buffer.data(), src.batch(), src.tokens(), src.heads(), n};
}

/// Tag of the `backend::cuda` forms of the ops: `device_encode_sequence` and `device_evolve`
/// are overloaded for it in `metastate/cuda/meta_state.cuh` and found by argument-dependent lookup.
struct on_device {};

template <class Backend>
constexpr bool is_cuda = std::is_same_v<Backend, backend::cuda>;

}  // namespace detail

/// Encoder for one token: e [B,1,H,n] = S[:n,:n] x̃[:n] for every (batch, head), where S
/// [B,H,N,N] is the WKV state after that token and x̃ is [B,1,H,N].
template <class T, class S>
void encode(state_view<const S> state, sequence_view<const T> x, sequence_view<T> e, int n) {
  static_assert(std::is_same_v<S, accum_t<T>>, "THE_STATE_MUST_HAVE_THE_ACCUMULATE_TYPE_OF_THE_STORAGE_TYPE");
  const index_t B = state.batch(), H = state.heads(), N = state.head_size();
  detail::check_sse_dim("meta_state::encode", n, N);
  expect_shape("meta_state::encode", "x", x.shape(), std::array<index_t, 4>{B, 1, H, N});
  expect_shape("meta_state::encode", "e", e.shape(), std::array<index_t, 4>{B, 1, H, n});
  using A = accum_t<T>;
  using matrix = Eigen::Matrix<A, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      const Eigen::Map<const matrix, 0, Eigen::OuterStride<>> s(state.at(b, h), n, n, Eigen::OuterStride<>(N));
      const auto q = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(x.at(b, 0, h), n).template cast<A>();
      Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(e.at(b, 0, h), n) = s.lazyProduct(q).template cast<T>();
    }
}

/// Encoder over a sequence: replays the WKV recurrence from the chunk-start state `start`
/// (not modified) with the same inputs, querying each S_t with x̃_t[:n]; e is [B,T,H,n].
/// This is how a chunked forward obtains S_t x̃_t without keeping every S_t (SPEC §4).
template <int N = dynamic, class Backend = backend::default_backend, class T, class S>
void encode_sequence(const wkv7::inputs<T>& wkv, state_view<const S> start, sequence_view<const T> x,
                     sequence_view<T> e, int n, workspace<T>& ws, const wkv7::options& opt = {}) {
  static_assert(!detail::is_cuda<Backend> || METASTATE_CUDA_COMPILER,
                "THE_CUDA_BACKEND_NEEDS_NVCC_AND_THE_METASTATE_CUDA_HEADERS");
  const auto& shape = wkv.r.shape();
  detail::check_sse_dim("meta_state::encode_sequence", n, shape[3]);
  expect_shape("meta_state::encode_sequence", "x", x.shape(), shape);
  expect_shape("meta_state::encode_sequence", "e", e.shape(), std::array<index_t, 4>{shape[0], shape[1], shape[2], n});
  if constexpr (detail::is_cuda<Backend>) {
    device_encode_sequence(detail::on_device{}, std::integral_constant<int, N>{}, wkv, start, x, e, n, opt);
  } else {
    const index_t heads = x.size() / shape[3];
    const bool whole = n == shape[3];  // the default: x̃ is the query and e is the replay's y
    // Otherwise the query is x̃ with its channels past n zeroed, so y_t[:n] = S_t[:n,:n] x̃_t[:n].
    sequence_view<const T> query = x;
    if (!whole) {
      ws.query.assign(x.data(), x.data() + x.size());
      for (index_t i = 0; i < heads; ++i) std::fill_n(ws.query.data() + i * shape[3] + n, shape[3] - n, T(0));
      query = sequence_view<const T>(ws.query.data(), shape[0], shape[1], shape[2], shape[3]);
      ws.replay_y.resize(static_cast<std::size_t>(x.size()));
    }
    ws.replay_state.assign(start.data(), start.data() + start.size());
    T* y = whole ? e.data() : ws.replay_y.data();
    wkv7::sequence<N, Backend>(wkv7::inputs<T>{query, wkv.w, wkv.k, wkv.v, wkv.a, wkv.b},
                               state_view<S>(ws.replay_state.data(), start.batch(), start.heads(), start.head_size()),
                               sequence_view<T>(y, shape[0], shape[1], shape[2], shape[3]), opt);
    if (!whole)
      for (index_t i = 0; i < heads; ++i) std::copy_n(ws.replay_y.data() + i * shape[3], n, e.data() + i * n);
  }
}

/// Evolution and readout over T tokens: M [B,H,n,n] holds M_0 on entry and M_T on return;
/// o [B,T,H,n] receives M_t x̃_t[:n]. `transition` gives w, a, b [B,T,H,N] (the layer's own,
/// first n channels used), `e` is [B,T,H,n], `x` (x̃) is [B,T,H,N].
template <int Nn = dynamic, class Backend = backend::default_backend, class T, class S>
void evolve(sequence_view<const T> w, sequence_view<const T> a, sequence_view<const T> b, sequence_view<const T> e,
            sequence_view<const T> x, state_view<S> m, sequence_view<T> o, workspace<T>& ws,
            const wkv7::options& opt = {}) {
  static_assert(!detail::is_cuda<Backend> || METASTATE_CUDA_COMPILER,
                "THE_CUDA_BACKEND_NEEDS_NVCC_AND_THE_METASTATE_CUDA_HEADERS");
  const int n = static_cast<int>(m.head_size());
  detail::check_sse_dim("meta_state::evolve", n, w.head_size());
  for (const auto& [name, view] : {std::pair{"a", &a}, std::pair{"b", &b}, std::pair{"x", &x}})
    expect_shape("meta_state::evolve", name, view->shape(), w.shape());
  // The Meta-State recurrence IS the WKV-7 op with (r, k, v) = (x̃, e, e) on the first n channels.
  if constexpr (detail::is_cuda<Backend>) {
    device_evolve(detail::on_device{}, std::integral_constant<int, Nn>{}, w, a, b, e, x, m, o, opt);
  } else {
    const auto wn = detail::leading(w, n, ws.w), an = detail::leading(a, n, ws.a), bn = detail::leading(b, n, ws.b),
               xn = detail::leading(x, n, ws.x);
    wkv7::sequence<Nn, Backend>(wkv7::inputs<T>{xn, wn, e, e, an, bn}, m, o, opt);
  }
}

}  // namespace metastate::meta_state
