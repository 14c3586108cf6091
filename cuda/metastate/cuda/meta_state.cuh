// The Meta-State ops on CUDA: encoder, evolution and readout fused in one kernel, and the
// `backend::cuda` forms of `meta_state::encode_sequence` and `meta_state::evolve`.
#pragma once

#include "metastate/cuda/wkv7.cuh"
#include "metastate/meta_state/meta_state.hpp"

namespace metastate::cuda::detail {

template <class D>
struct meta_state_params {
  const D *w, *k, *v, *a, *b, *x;  // [B,T,H,N]
  D* o;                            // [B,T,H,n]
  const float* start;              // [B,H,N,N], S at the first token's start; read only
  float* m;                        // [B,H,n,n]
  int tokens, heads, head_size, n;
  bool log_decay;
};

/// One block per (batch, head), thread i owns row i of the replayed WKV state S and row i
/// of the Meta-State M, both in registers. Per token: S's transition, e = S[:n,:n] x̃[:n]
/// (through shared memory), then M's transition with (k, v) = (e, e) and the same w, a, b,
/// and o = M x̃[:n]. The decay, a and b are loaded once for both states.
template <int N, class D>
__global__ void __launch_bounds__(N) meta_state_kernel(const meta_state_params<D> p) {
  __shared__ __align__(16) float w_[N], k_[N], a_[N], b_[N], bn_[N], x_[N], e_[N];
  const int i = threadIdx.x, n = p.n, head = blockIdx.x % p.heads;
  const long long batch = blockIdx.x / p.heads;
  const bool live = i < p.head_size, in_m = i < n;
  const float* s_row = p.start + (static_cast<long long>(blockIdx.x) * p.head_size + (live ? i : 0)) * p.head_size;
  float* m_row = p.m + (static_cast<long long>(blockIdx.x) * n + (in_m ? i : 0)) * n;
  float s[N], m[N];
#pragma unroll
  for (int j = 0; j < N; ++j) {
    s[j] = live && j < p.head_size ? s_row[j] : 0.f;
    m[j] = in_m && j < n ? m_row[j] : 0.f;
  }
  const long long first_row = batch * p.tokens * p.heads + head;
  auto load = [&](long long row) {
    const long long o = row * p.head_size + i;
    const float w = to_float(p.w[o]);
    return token_inputs{to_float(p.x[o]), p.log_decay ? expf(w) : w, to_float(p.k[o]),
                        to_float(p.v[o]), to_float(p.a[o]),          to_float(p.b[o])};
  };
  token_inputs next{};  // .r carries x̃
  if (live && p.tokens > 0) next = load(first_row);
  for (int t = 0; t < p.tokens; ++t) {
    const token_inputs in = next;
    w_[i] = in.w;
    k_[i] = in.k;
    a_[i] = in.a;
    b_[i] = in.b;
    bn_[i] = in_m ? in.b : 0.f;  // M sees b[:n] (and x̃[:n]): its columns past n stay zero
    x_[i] = in_m ? in.r : 0.f;
    __syncthreads();
    if (live && t + 1 < p.tokens) next = load(first_row + (t + 1) * p.heads);
    const float e = update_row(s, w_, b_, k_, x_, dot(s, a_), in.v);
    e_[i] = in_m ? e : 0.f;
    __syncthreads();
    const float o = update_row(m, w_, bn_, e_, x_, dot(m, a_), e_[i]);
    if (in_m) p.o[(first_row + t * p.heads) * n + i] = from_float<D>(o);
    __syncthreads();  // the next token overwrites the shared inputs
  }
  if (in_m) {
#pragma unroll
    for (int j = 0; j < N; ++j)
      if (j < n) m_row[j] = m[j];
  }
}

}  // namespace metastate::cuda::detail

namespace metastate::cuda {

/// Encoder, evolution and readout of a Meta-State layer over T tokens in one kernel (SPEC §4),
/// all pointers device memory: replays the WKV state from `start` (S at the chunk start, not
/// modified) with the layer's w, k, v, a, b (`wkv.r` is not read), forms e_t = S_t[:n,:n] x̃_t[:n],
/// evolves M [B,H,n,n] (M_0 on entry, M_T on return) and writes o_t = M_t x̃_t[:n] to o [B,T,H,n].
/// The same result as `meta_state::encode_sequence` then `meta_state::evolve`, without the
/// intermediate e or a second pass over the inputs. Launches on `opt.exec.stream`.
template <int N = dynamic, class T>
void meta_state_sequence(const wkv7::inputs<T>& wkv, state_view<const float> start, sequence_view<const T> x,
                         state_view<float> m, sequence_view<T> o, const wkv7::options& opt = {}) {
  const char* context = "cuda::meta_state_sequence";
  const auto& shape = wkv.w.shape();
  expect_extents(context, "w", shape);
  expect_extents(context, "m", m.shape());
  const index_t H = shape[2], head_size = N == dynamic ? shape[3] : N;
  const int n = static_cast<int>(m.head_size());
  meta_state::detail::check_sse_dim(context, n, head_size);
  const std::pair<const char*, const sequence_view<const T>*> named[] = {
      {"w", &wkv.w}, {"k", &wkv.k}, {"v", &wkv.v}, {"a", &wkv.a}, {"b", &wkv.b}, {"x", &x}};
  for (const auto& [name, view] : named) {
    expect_shape(context, name, view->shape(), std::array<index_t, 4>{shape[0], shape[1], H, head_size});
    meta_state::detail::expect_data(context, name, *view);
  }
  expect_shape(context, "start", start.shape(), std::array<index_t, 4>{shape[0], H, head_size, head_size});
  expect_shape(context, "m", m.shape(), std::array<index_t, 4>{shape[0], H, n, n});
  expect_shape(context, "o", o.shape(), std::array<index_t, 4>{shape[0], shape[1], H, n});
  meta_state::detail::expect_data(context, "start", start);
  meta_state::detail::expect_data(context, "m", m);
  meta_state::detail::expect_data(context, "o", o);
  expect_disjoint(context, std::array{bytes_of("o", o), bytes_of("m", m)},
                  std::array{bytes_of("w", wkv.w), bytes_of("k", wkv.k), bytes_of("v", wkv.v), bytes_of("a", wkv.a),
                             bytes_of("b", wkv.b), bytes_of("x", x), bytes_of("start", start)});
  using D = detail::device_t<T>;
  const detail::meta_state_params<D> params{
      detail::device_ptr(wkv.w.data()), detail::device_ptr(wkv.k.data()), detail::device_ptr(wkv.v.data()),
      detail::device_ptr(wkv.a.data()), detail::device_ptr(wkv.b.data()), detail::device_ptr(x.data()),
      detail::device_ptr(o.data()),     start.data(),
      m.data(),                         static_cast<int>(shape[1]),
      static_cast<int>(H),              static_cast<int>(head_size),
      n,                                opt.decay == wkv7::decay_input::log_w};
  if (shape[0] * H == 0 || shape[1] == 0) return;
  detail::with_head_size<N>(context, static_cast<int>(head_size), [&](auto size) {
    constexpr int K = decltype(size)::value;
    check_before_launch(context);
    detail::meta_state_kernel<K, D><<<static_cast<unsigned>(shape[0] * H), K, 0, stream_of(opt.exec)>>>(params);
    check_launch(context);
  });
}

}  // namespace metastate::cuda

namespace metastate::meta_state::detail {

// Found by argument-dependent lookup from `encode_sequence<N, backend::cuda>` and
// `evolve<N, backend::cuda>` (their shapes and overlaps are checked there).

template <int N, class T>
void device_encode_sequence(on_device, std::integral_constant<int, N>, const wkv7::inputs<T>& wkv,
                            state_view<const float> start, sequence_view<const T> x, sequence_view<T> e, int n,
                            const wkv7::options& opt) {
  namespace cd = metastate::cuda::detail;
  using D = cd::device_t<T>;
  const auto& shape = wkv.r.shape();
  const int N_ = static_cast<int>(shape[3]);
  // The replay: the WKV recurrence from `start` (kept) with x̃[:n] as the query; y[:n] is e.
  const cd::recurrence_params<D> params{
      cd::device_ptr(x.data()),       cd::device_ptr(wkv.w.data()), cd::device_ptr(wkv.k.data()),
      cd::device_ptr(wkv.v.data()),   cd::device_ptr(wkv.a.data()), cd::device_ptr(wkv.b.data()),
      cd::device_ptr(e.data()),       const_cast<float*>(start.data()),
      static_cast<int>(shape[1]),     static_cast<int>(shape[2]),
      N_,                             N_,
      N_,                             n,
      n,                              n,
      opt.decay == wkv7::decay_input::log_w, true};
  cd::launch_recurrence<N>("meta_state::encode_sequence (cuda)", params, shape[0] * shape[2],
                           metastate::cuda::stream_of(opt.exec));
}

template <int Nn, class T>
void device_evolve(on_device, std::integral_constant<int, Nn>, sequence_view<const T> w, sequence_view<const T> a,
                   sequence_view<const T> b, sequence_view<const T> e, sequence_view<const T> x, state_view<float> m,
                   sequence_view<T> o, const wkv7::options& opt) {
  namespace cd = metastate::cuda::detail;
  using D = cd::device_t<T>;
  const int n = static_cast<int>(m.head_size()), N = static_cast<int>(w.head_size());
  // The WKV-7 recurrence on the first n channels with (r, k, v) = (x̃, e, e).
  const cd::recurrence_params<D> params{
      cd::device_ptr(x.data()), cd::device_ptr(w.data()),    cd::device_ptr(e.data()),
      cd::device_ptr(e.data()), cd::device_ptr(a.data()),    cd::device_ptr(b.data()),
      cd::device_ptr(o.data()), m.data(),
      static_cast<int>(w.tokens()), static_cast<int>(w.heads()),
      n,                        N,
      n,                        n,
      n,                        n,
      opt.decay == wkv7::decay_input::log_w, false};
  cd::launch_recurrence<Nn>("meta_state::evolve (cuda)", params, w.batch() * w.heads(),
                            metastate::cuda::stream_of(opt.exec));
}

}  // namespace metastate::meta_state::detail
