// Meta-State ops (SPEC §4): the Self-State Encoder, and the Meta-State evolution with its readout.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <string>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "metastate/core/backend.hpp"
#include "metastate/core/error.hpp"
#include "metastate/core/head_size.hpp"
#include "metastate/core/parallel.hpp"
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
  std::vector<accum_t<T>> replay_state, encoder;
  std::vector<const accum_t<T>*> encoder_rows;
};

/// The block length of the record the model asks `wkv7::sequence` for and `encode_recorded`
/// reads (docs/PERFORMANCE.md: the measured trade between recording states and the encoder's
/// per-block work).
inline constexpr index_t record_every = 8;

/// The longest block `encode_recorded` takes (its per-block work grows with the block).
inline constexpr index_t max_every = 64;

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

/// out[t][col + i] = Σ_r z[t][r] rows[r][col + i] for TT tokens and CV vectors of columns,
/// the accumulators in registers (a small matrix-product kernel; rows are read once per tile).
template <int TT, int CV, class Batch, class S>
void encoder_tile(const S* const* rows, index_t inner, const S* z, index_t z_stride, index_t col, S* out,
                  index_t out_stride) {
  constexpr index_t L = static_cast<index_t>(Batch::size);
  Batch acc[TT][CV];
  for (int tt = 0; tt < TT; ++tt)
    for (int cv = 0; cv < CV; ++cv) acc[tt][cv] = Batch(S(0));
  for (index_t r = 0; r < inner; ++r) {
    Batch x[CV];
    for (int cv = 0; cv < CV; ++cv) x[cv] = Batch::load_unaligned(rows[r] + col + cv * L);
    for (int tt = 0; tt < TT; ++tt) {
      const Batch c(z[tt * z_stride + r]);
      for (int cv = 0; cv < CV; ++cv) acc[tt][cv] = xsimd::fma(c, x[cv], acc[tt][cv]);
    }
  }
  for (int tt = 0; tt < TT; ++tt)
    for (int cv = 0; cv < CV; ++cv) acc[tt][cv].store_unaligned(out + tt * out_stride + col + cv * L);
}

/// `encoder_tile` for TT = 1..4 tokens.
template <int CV, class Batch, class S>
void encoder_tiles(int tokens, const S* const* rows, index_t inner, const S* z, index_t z_stride, index_t col,
                   S* out, index_t out_stride) {
  switch (tokens) {
    case 4: return encoder_tile<4, CV, Batch>(rows, inner, z, z_stride, col, out, out_stride);
    case 3: return encoder_tile<3, CV, Batch>(rows, inner, z, z_stride, col, out, out_stride);
    case 2: return encoder_tile<2, CV, Batch>(rows, inner, z, z_stride, col, out, out_stride);
    default: return encoder_tile<1, CV, Batch>(rows, inner, z, z_stride, col, out, out_stride);
  }
}

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

/// Encoder over a sequence from what `wkv7::sequence` recorded for the same inputs from
/// `start` (`saved`: the state every `saved.every` tokens, transposed, and u_t of every
/// token): e [B,T,H,n] = S_t[:n,:n] x̃_t[:n] without replaying the recurrence. In a block of
/// `every` tokens from the state S_c before its first token c,
///   S_t = S_c D_{c..t} + Σ_{c≤τ≤t} (u_τ b_τᵀ + v_τ k_τᵀ) D_{τ+1..t},  D_{i..j} = diag(w_i ∘ ⋯ ∘ w_j),
/// so, over channels < n,
///   e_t = S_c x̂_t + Σ_τ (β_tτ u_τ + κ_tτ v_τ),  x̂_t = D_{c..t} x̃_t,
///   β_tτ = b_τ · D_{τ+1..t} x̃_t,  κ_tτ = k_τ · D_{τ+1..t} x̃_t.
/// x̂, β and κ come from carrying each query back through the block's decays (products only,
/// never a division by a decay, so no decay is too small), then one product of the block's
/// [x̂ β κ] by the rows [S_cᵀ; u; v]: about n² + 2n·every multiply-adds per token instead of
/// a second pass over the N² state. `start` is not modified.
template <class T, class S>
void encode_recorded(const wkv7::inputs<T>& wkv, state_view<const S> start, const wkv7::record<S>& saved,
                     sequence_view<const T> x, sequence_view<T> e, int n, workspace<T>& ws,
                     const wkv7::options& opt = {}) {
  static_assert(std::is_same_v<S, accum_t<T>>, "THE_STATE_MUST_HAVE_THE_ACCUMULATE_TYPE_OF_THE_STORAGE_TYPE");
  const char* context = "meta_state::encode_recorded";
  const auto& shape = wkv.r.shape();
  const index_t B = shape[0], T_ = shape[1], H = shape[2], N = shape[3], every = saved.every;
  detail::check_sse_dim(context, n, N);
  expect_shape(context, "x", x.shape(), shape);
  expect_shape(context, "e", e.shape(), std::array<index_t, 4>{B, T_, H, n});
  expect_shape(context, "start", start.shape(), std::array<index_t, 4>{B, H, N, N});
  if (every <= 0 || saved.removal == nullptr || (wkv7::recorded_states(T_, every) > 0 && saved.states == nullptr))
    throw shape_error(std::string(context) + ": the record needs every >= 1 and 'removal' and 'states' storage, " +
                      "got every = " + std::to_string(every));
  if (every > max_every)
    throw shape_error(std::string(context) + ": a record every " + std::to_string(every) +
                      " tokens; the encoder takes at most " + std::to_string(max_every));
  using batch = xsimd::batch<S, backend::default_simd_arch>;
  constexpr index_t L = static_cast<index_t>(batch::size), TT = 4, CV = 4;
  const index_t blocks = (T_ + every - 1) / every, units = B * blocks;
  if (units == 0) return;
  int threads = resolve_threads(opt.exec);
  if (double(units) * H * every * n * n < wkv7::detail::parallel_min_updates) threads = 1;
  threads = static_cast<int>(std::min<index_t>(threads, units));
  // Per thread: S_0ᵀ (n x n), w, b, k, v of a block (every x n each), [x̂ β κ], the query, e.
  const index_t inner = n + 2 * every, scratch = n * n + 4 * every * n + every * inner + n + every * n;
  ws.encoder.resize(static_cast<std::size_t>(threads * scratch));
  ws.encoder_rows.resize(static_cast<std::size_t>(threads * inner));
  const bool log_decay = opt.decay == wkv7::decay_input::log_w;
  // Channels < n of one token's input as S: the input itself when it already is S, else
  // converted into `buffer` (with exp for a log-decay).
  auto as_accum = [n](const T* in, S* buffer, bool exp) -> const S* {
    if constexpr (std::is_same_v<T, S>)
      if (!exp) return in;
    for (int j = 0; j < n; ++j) buffer[j] = exp ? std::exp(static_cast<S>(in[j])) : static_cast<S>(in[j]);
    return buffer;
  };

  auto run_unit = [&](index_t unit, S* buffer, const S** rows) {
    // Sizes as locals: the vector stores (may-alias types) would otherwise force reloads of
    // captured references inside the inner loops.
    const index_t nn = n, b = unit / blocks, block = unit % blocks, c = block * every, m = std::min(every, T_ - c);
    S *start_t = buffer, *w = start_t + nn * nn, *bk = w + every * nn, *kk = bk + every * nn, *v = kk + every * nn,
      *z = v + every * nn, *q = z + every * inner, *out = q + nn;
    const index_t vectors = nn / L * L;
    for (index_t h = 0; h < H; ++h) {
      // The block's inputs as S: the storage itself, or converted (decays from log-decays).
      const S *wp[max_every], *bp[max_every], *kp[max_every], *vp[max_every];
      for (index_t tau = 0; tau < m; ++tau) {
        const index_t t = c + tau;
        wp[tau] = as_accum(wkv.w.at(b, t, h), w + tau * nn, log_decay);
        bp[tau] = as_accum(wkv.b.at(b, t, h), bk + tau * nn, false);
        kp[tau] = as_accum(wkv.k.at(b, t, h), kk + tau * nn, false);
        vp[tau] = as_accum(wkv.v.at(b, t, h), v + tau * nn, false);
      }
      for (index_t t = 0; t < m; ++t) {  // carry x̃_t back to the block start
        S* zt = z + t * inner;
        const T* xt = x.at(b, c + t, h);
        for (index_t j = 0; j < nn; ++j) q[j] = static_cast<S>(xt[j]);
        for (index_t tau = t; tau >= 0; --tau) {
          const S *bt = bp[tau], *kt = kp[tau], *wt = wp[tau];
          batch sb(S(0)), sk(S(0));
          for (index_t j = 0; j < vectors; j += L) {
            const batch qj = batch::load_unaligned(q + j);
            sb = xsimd::fma(batch::load_unaligned(bt + j), qj, sb);
            sk = xsimd::fma(batch::load_unaligned(kt + j), qj, sk);
            (qj * batch::load_unaligned(wt + j)).store_unaligned(q + j);
          }
          S tb = xsimd::hadd(sb), tk = xsimd::hadd(sk);
          for (index_t j = vectors; j < nn; ++j) {
            tb += bt[j] * q[j];
            tk += kt[j] * q[j];
            q[j] *= wt[j];
          }
          zt[nn + 2 * tau] = tb;
          zt[nn + 2 * tau + 1] = tk;
        }
        std::copy_n(q, nn, zt);
        std::fill(zt + nn + 2 * (t + 1), zt + inner, S(0));
      }
      // Rows of the product: S_cᵀ (the start state transposed here; recorded states already are).
      if (block == 0) {
        const S* s0 = start.at(b, h);
        for (index_t i = 0; i < nn; ++i)
          for (index_t j = 0; j < nn; ++j) start_t[j * nn + i] = s0[i * N + j];
        for (index_t j = 0; j < nn; ++j) rows[j] = start_t + j * nn;
      } else {
        const S* s_c = saved.states + ((block - 1) * B * H + b * H + h) * N * N;
        for (index_t j = 0; j < nn; ++j) rows[j] = s_c + j * N;
      }
      for (index_t tau = 0; tau < m; ++tau) {
        rows[nn + 2 * tau] = saved.removal + ((b * T_ + c + tau) * H + h) * N;
        rows[nn + 2 * tau + 1] = vp[tau];
      }
      for (index_t t0 = 0; t0 < m; t0 += TT) {
        const int tokens = static_cast<int>(std::min(TT, m - t0));
        const index_t used = nn + 2 * (t0 + tokens);  // β, κ are zero for later tokens
        const S* zt = z + t0 * inner;
        S* ot = out + t0 * nn;
        index_t col = 0;
        for (; col + CV * L <= nn; col += CV * L)
          detail::encoder_tiles<CV, batch>(tokens, rows, used, zt, inner, col, ot, nn);
        for (; col + L <= nn; col += L) detail::encoder_tiles<1, batch>(tokens, rows, used, zt, inner, col, ot, nn);
        for (; col < nn; ++col)
          for (int tt = 0; tt < tokens; ++tt) {
            S acc = 0;
            for (index_t r = 0; r < used; ++r) acc += zt[tt * inner + r] * rows[r][col];
            ot[tt * nn + col] = acc;
          }
      }
      for (index_t t = 0; t < m; ++t) std::transform(out + t * nn, out + (t + 1) * nn, e.at(b, c + t, h),
                                                     [](S y) { return static_cast<T>(y); });
    }
  };
  auto run_thread = [&](int tid) {
    S* buffer = ws.encoder.data() + tid * scratch;
    const S** rows = ws.encoder_rows.data() + tid * inner;
    for (index_t u = units * tid / threads; u < units * (tid + 1) / threads; ++u) run_unit(u, buffer, rows);
  };
  if (threads == 1) {
    run_thread(0);
    return;
  }
#if METASTATE_HAS_OPENMP
#pragma omp parallel num_threads(threads)
  run_thread(thread_index());
#endif
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
