// Meta-State ops (SPEC §4): the Self-State Encoder, and the Meta-State evolution with its readout.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "metastate/core/aligned.hpp"
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
  aligned_vector<T> query, replay_y, w, a, b, x, encoded;
  aligned_vector<accum_t<T>> replay_state, encoder;
  std::vector<const accum_t<T>*> encoder_rows;
};

/// The block length of the record the model asks `wkv7::sequence` for and `encode_recorded`
/// reads (docs/PERFORMANCE.md: the measured trade between recording states and the encoder's
/// per-block work).
inline constexpr index_t record_every = 16;

/// The longest block `encode_recorded` takes (its per-block work grows with the block).
inline constexpr index_t max_every = 64;

namespace detail {

inline void check_sse_dim(const char* context, int n, index_t N) {
  if (n <= 0 || n > N)
    throw shape_error(std::string(context) + ": sse_dim " + std::to_string(n) + " must be in [1, head size " +
                      std::to_string(N) + "]");
}

/// A view with elements must have data.
template <class View>
void expect_data(const char* context, const char* name, const View& view) {
  if (view.size() > 0 && view.data() == nullptr)
    throw shape_error(std::string(context) + ": tensor '" + name + "' has no data");
}

/// The six WKV-7 inputs and x̃ each have `shape` and data, or shape_error names the tensor.
template <class T>
void expect_inputs(const char* context, const wkv7::inputs<T>& wkv, sequence_view<const T> x,
                   const std::array<index_t, 4>& shape) {
  const std::pair<const char*, sequence_view<const T>> named[] = {
      {"r", wkv.r}, {"w", wkv.w}, {"k", wkv.k}, {"v", wkv.v}, {"a", wkv.a}, {"b", wkv.b}, {"x", x}};
  for (const auto& [name, view] : named) {
    expect_shape(context, name, view.shape(), shape);
    expect_data(context, name, view);
  }
}

/// A negative thread count is refused under the op's own name (an inner call would use its own).
inline void check_threads(const char* context, const wkv7::options& opt) {
  if (opt.exec.threads < 0) throw_negative_threads(context, opt.exec.threads);
}

/// In validating builds (METASTATE_VALIDATE_VALUES), the caller's tensors under their own
/// names and indices (an inner WKV-7 call would report its copies under its names): the
/// decays in range, every value finite.
template <class T>
void validate_named(const char* context, sequence_view<const T> w, wkv7::decay_input decay,
                    std::initializer_list<std::pair<const char*, sequence_view<const T>>> tensors) {
  if constexpr (METASTATE_VALIDATE_VALUES) {
    for (const auto& [name, view] : tensors) wkv7::detail::expect_finite(context, name, view.data(), view.size());
    wkv7::detail::expect_decays(context, w, decay);
  }
}

/// dst [B,T,H,n] = src[..., :n] (dst reuses `buffer`).
template <class T>
sequence_view<const T> leading(sequence_view<const T> src, int n, aligned_vector<T>& buffer) {
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

/// Independent sums an FMA pipeline needs in flight to run at its rate (two pipes, each
/// with a latency of 4 cycles, on the machines measured).
inline constexpr int sums_in_flight = 8;

/// out[t][col + i] = Σ_r z[t][r] rows[r][col + i] for TT tokens and CV vectors of columns,
/// the accumulators in registers (a small matrix-product kernel; rows are read once per tile).
/// A tile with fewer than `sums_in_flight` sums spreads its rows over K sets of them, added
/// at the end: the β tiles of one vector (4 sums) ran at half the rate of the FMAs (the β
/// product of a 16-token block 72 -> 77 GFLOP/s in L1, medians, ad hoc, AVX2).
template <int TT, int CV, class Batch, class S>
void encoder_tile(const S* const* rows, index_t inner, const S* z, index_t z_stride, index_t col, S* out,
                  index_t out_stride) {
  constexpr index_t L = static_cast<index_t>(Batch::size);
  constexpr int K = std::max(1, sums_in_flight / (TT * CV));
  Batch acc[K][TT][CV];
  for (int k = 0; k < K; ++k)
    for (int tt = 0; tt < TT; ++tt)
      for (int cv = 0; cv < CV; ++cv) acc[k][tt][cv] = Batch(S(0));
  auto add_row = [&](index_t r, Batch(&sums)[TT][CV]) {
    Batch x[CV];
    for (int cv = 0; cv < CV; ++cv) x[cv] = Batch::load_unaligned(rows[r] + col + cv * L);
    for (int tt = 0; tt < TT; ++tt) {
      const Batch c(z[tt * z_stride + r]);
      for (int cv = 0; cv < CV; ++cv) sums[tt][cv] = xsimd::fma(c, x[cv], sums[tt][cv]);
    }
  };
  const index_t whole = inner - inner % K;
  for (index_t r = 0; r < whole; r += K)
    for (int k = 0; k < K; ++k) add_row(r + k, acc[k]);
  for (int k = 0; k < static_cast<int>(inner - whole); ++k) add_row(whole + k, acc[k]);
  for (int k = 1; k < K; ++k)
    for (int tt = 0; tt < TT; ++tt)
      for (int cv = 0; cv < CV; ++cv) acc[0][tt][cv] += acc[k][tt][cv];
  for (int tt = 0; tt < TT; ++tt)
    for (int cv = 0; cv < CV; ++cv) acc[0][tt][cv].store_unaligned(out + tt * out_stride + col + cv * L);
}

/// The most vectors of columns a 4-token tile takes: its 4·CV accumulators, CV loaded row
/// vectors and a broadcast must stay in registers (16 of them below AVX-512: at CV = 4 the
/// tile spilled).
template <class Batch>
inline constexpr int widest_tile = backend::registers<typename Batch::arch_type> >= 32 ? 4 : 2;

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

/// out[t][c] = Σ_r z[t][r] rows[r][c] for `tokens` tokens (TT at a time) and `columns` columns,
/// over the first `inner` rows. Causality, where the product has it: when `rows_per_token` > 0,
/// token t uses only the first inner + rows_per_token · (t + 1) rows (z is zero past those);
/// when `columns_per_token` > 0, only its first columns_per_token · (t + 1) columns are needed
/// (each tile of tokens computes whole vectors of columns up to its last token's need).
template <class Batch, class S>
void encoder_product(index_t tokens, const S* const* rows, index_t inner, index_t rows_per_token, const S* z,
                     index_t z_stride, index_t columns, index_t columns_per_token, S* out, index_t out_stride) {
  constexpr index_t L = static_cast<index_t>(Batch::size), TT = 4;
  for (index_t t0 = 0; t0 < tokens; t0 += TT) {
    const int count = static_cast<int>(std::min(TT, tokens - t0));
    const index_t used = inner + rows_per_token * (t0 + count),
                  needed = columns_per_token > 0
                               ? std::min(columns, (columns_per_token * (t0 + count) + L - 1) / L * L)
                               : columns;
    const S* zt = z + t0 * z_stride;
    S* ot = out + t0 * out_stride;
    index_t col = 0;
    if constexpr (widest_tile<Batch> >= 4)
      for (; col + 4 * L <= needed; col += 4 * L) encoder_tiles<4, Batch>(count, rows, used, zt, z_stride, col, ot, out_stride);
    for (; col + 2 * L <= needed; col += 2 * L) encoder_tiles<2, Batch>(count, rows, used, zt, z_stride, col, ot, out_stride);
    for (; col + L <= needed; col += L) encoder_tiles<1, Batch>(count, rows, used, zt, z_stride, col, ot, out_stride);
    for (; col < needed; ++col)
      for (int tt = 0; tt < count; ++tt) {
        S acc = 0;
        for (index_t r = 0; r < used; ++r) acc += zt[tt * z_stride + r] * rows[r][col];
        ot[tt * out_stride + col] = acc;
      }
  }
}

}  // namespace detail

/// Encoder for one token: e [B,1,H,n] = S[:n,:n] x̃[:n] for every (batch, head), where S
/// [B,H,N,N] is the WKV state after that token and x̃ is [B,1,H,N].
template <class T, class S>
void encode(state_view<const S> state, sequence_view<const T> x, sequence_view<T> e, int n) {
  static_assert(std::is_same_v<S, accum_t<T>>, "THE_STATE_MUST_HAVE_THE_ACCUMULATE_TYPE_OF_THE_STORAGE_TYPE");
  const index_t B = state.batch(), H = state.heads(), N = state.head_size();
  expect_extents("meta_state::encode", "state", state.shape());
  detail::check_sse_dim("meta_state::encode", n, N);
  expect_shape("meta_state::encode", "x", x.shape(), std::array<index_t, 4>{B, 1, H, N});
  expect_shape("meta_state::encode", "e", e.shape(), std::array<index_t, 4>{B, 1, H, n});
  detail::expect_data("meta_state::encode", "state", state);
  detail::expect_data("meta_state::encode", "x", x);
  detail::expect_data("meta_state::encode", "e", e);
  expect_disjoint("meta_state::encode", std::array{bytes_of("e", e)},
                  std::array{bytes_of("state", state), bytes_of("x", x)});
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
  expect_extents("meta_state::encode_sequence", "r", shape);
  detail::check_sse_dim("meta_state::encode_sequence", n, shape[3]);
  if (N != dynamic)  // (the cuda kernels launch N threads per head whatever the views say)
    expect_shape("meta_state::encode_sequence", "r", shape, std::array<index_t, 4>{shape[0], shape[1], shape[2], N});
  expect_shape("meta_state::encode_sequence", "start", start.shape(),
               std::array<index_t, 4>{shape[0], shape[2], shape[3], shape[3]});
  expect_shape("meta_state::encode_sequence", "e", e.shape(), std::array<index_t, 4>{shape[0], shape[1], shape[2], n});
  // Every tensor here, by the caller's names: the cuda form has no WKV-7 call to check the
  // inputs, and the replay below is one with x̃ as its 'r'.
  detail::expect_inputs("meta_state::encode_sequence", wkv, x, shape);
  detail::expect_data("meta_state::encode_sequence", "start", start);
  detail::expect_data("meta_state::encode_sequence", "e", e);
  detail::check_threads("meta_state::encode_sequence", opt);
  expect_disjoint("meta_state::encode_sequence", std::array{bytes_of("e", e)},
                  std::array{bytes_of("r", wkv.r), bytes_of("w", wkv.w), bytes_of("k", wkv.k), bytes_of("v", wkv.v),
                             bytes_of("a", wkv.a), bytes_of("b", wkv.b), bytes_of("start", start), bytes_of("x", x)});
  if constexpr (detail::is_cuda<Backend>) {
    device_encode_sequence(detail::on_device{}, std::integral_constant<int, N>{}, wkv, start, x, e, n, opt);
  } else {
    detail::validate_named<T>("meta_state::encode_sequence", wkv.w, opt.decay,
                              {{"w", wkv.w}, {"k", wkv.k}, {"v", wkv.v}, {"a", wkv.a}, {"b", wkv.b}, {"x", x}});
    if constexpr (METASTATE_VALIDATE_VALUES)
      wkv7::detail::expect_finite("meta_state::encode_sequence", "start", start.data(), start.size());
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

namespace detail {

/// Where a token's sweep multiplies each column j by its factor f[j]: never (the deferred
/// form's tokens), before the update (the plain recurrence: f = w), or after the readout (the
/// deferred form's last token of a block: f = P, which takes X back to M, so that the next u
/// comes from M instead of from a separate sweep).
enum class column_factor { none, before_update, after_readout };

/// One token of the WKV-7 recurrence on a transposed working copy (column j of the np rows
/// at X + j·np), rows [i0, i0 + R·L):
///   X[:,j] ← X[:,j] (∘ f[j] before) + u·b[j] + e·k[j];  o = X q;  (X[:,j] ← X[:,j] ∘ f[j] after);
///   u ← X a (the next u).
/// Column j < ahead_count also prefetches the cache line at ahead[j].
/// The Meta-State recurrence in its deferred form or plain (see `column_factor`).
template <int R, column_factor F, class Batch, class S>
METASTATE_ALWAYS_INLINE void recurrence_rows(S* X, index_t np, index_t i0, const S* f, const S* b, const S* k,
                                             const S* q, const S* a, S* u, const S* e, S* o,
                                             const char* const* ahead, index_t ahead_count) {
  constexpr index_t L = static_cast<index_t>(Batch::size);
  Batch uu[R], ee[R], out[R], next[R];
  for (int r = 0; r < R; ++r) {
    uu[r] = Batch::load_aligned(u + i0 + r * L);
    ee[r] = Batch::load_aligned(e + i0 + r * L);
    out[r] = next[r] = Batch(S(0));
  }
  S* col = X + i0;
  for (index_t j = 0; j < np; ++j, col += np) {
    if (j < ahead_count) __builtin_prefetch(ahead[j], 0, 3);
    const Batch bj(b[j]), kj(k[j]), qj(q[j]), aj(a[j]);
    for (int r = 0; r < R; ++r) {
      Batch x = Batch::load_aligned(col + r * L);
      if constexpr (F == column_factor::before_update) x *= Batch(f[j]);
      x = xsimd::fma(uu[r], bj, x);
      x = xsimd::fma(ee[r], kj, x);
      out[r] = xsimd::fma(x, qj, out[r]);
      if constexpr (F == column_factor::after_readout) x *= Batch(f[j]);
      x.store_aligned(col + r * L);
      next[r] = xsimd::fma(x, aj, next[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    out[r].store_unaligned(o + i0 + r * L);  // (the caller's o where it takes whole vectors)
    next[r].store_aligned(u + i0 + r * L);
  }
}

/// `recurrence_rows` over all np rows: blocks of 4 vectors, then single vectors (the first
/// block's columns prefetch `ahead`). (With 16 registers the row vectors of u and e become
/// memory operands; 2-vector blocks, which fit, measured no faster on AVX2, ad hoc.)
template <column_factor F, class Batch, class S>
void recurrence_token(S* X, index_t np, const S* f, const S* b, const S* k, const S* q, const S* a, S* u,
                      const S* e, S* o, const char* const* ahead, index_t ahead_count) {
  constexpr index_t L = static_cast<index_t>(Batch::size), R = 4;
  index_t i = 0;
  for (; i + R * L <= np; i += R * L, ahead_count = 0)
    recurrence_rows<R, F, Batch>(X, np, i, f, b, k, q, a, u, e, o, ahead, ahead_count);
  for (; i < np; i += L, ahead_count = 0)
    recurrence_rows<1, F, Batch>(X, np, i, f, b, k, q, a, u, e, o, ahead, ahead_count);
}

/// u = X a.
template <class Batch, class S>
void column_product(const S* X, index_t np, const S* a, S* u) {
  constexpr index_t L = static_cast<index_t>(Batch::size), R = 4;  // R sums in flight hide the FMA latency
  for (index_t i0 = 0; i0 < np; i0 += R * L) {
    const index_t vectors = std::min(R, (np - i0) / L);
    Batch acc[R];
    for (index_t r = 0; r < R; ++r) acc[r] = Batch(S(0));
    const S* col = X + i0;
    for (index_t j = 0; j < np; ++j, col += np)
      for (index_t r = 0; r < vectors; ++r) acc[r] = xsimd::fma(Batch::load_aligned(col + r * L), Batch(a[j]), acc[r]);
    for (index_t r = 0; r < vectors; ++r) acc[r].store_aligned(u + i0 + r * L);
  }
}

/// A thread's share of a call's inputs and record above which `evolve_recorded` prefetches
/// each next unit's rows and recorded state during the current unit (1 MiB, the L2 of the
/// machines measured): 12 heads' 128-token chunks on one thread ran 1.06-1.08x faster, 32 heads
/// 1.07x, two threads on 12 heads 1.02x (in one process, AVX2); 1 or 2 heads, whose chunks
/// stay in L2, ran 1.01-1.02x slower with it.
inline constexpr double prefetch_min_bytes = 1 << 20;

/// The most of those lines a token lists for its sweep.
inline constexpr index_t max_listed_lines = 256;

/// The checks `encode_recorded` and `evolve_recorded` share: shapes, data, and a record
/// filled by a call of this shape and decay input, on these inputs (as far as their
/// fingerprint tells: see the end).
template <class T, class S>
void check_recorded(const char* context, const wkv7::inputs<T>& wkv, const wkv7::record<S>& saved,
                    sequence_view<const T> x, int n, const wkv7::options& opt) {
  const auto& shape = wkv.r.shape();
  expect_extents(context, "r", shape);
  check_sse_dim(context, n, shape[3]);
  expect_inputs(context, wkv, x, shape);
  check_threads(context, opt);
  validate_named<T>(context, wkv.w, opt.decay,
                    {{"w", wkv.w}, {"k", wkv.k}, {"v", wkv.v}, {"a", wkv.a}, {"b", wkv.b}, {"x", x}});
  auto described = [](const std::array<index_t, 4>& s, wkv7::decay_input decay) {
    return shape_string(s) + (decay == wkv7::decay_input::w ? " with decays w" : " with log-decays");
  };
  if (!saved.filled())
    throw shape_error(std::string(context) + ": the record holds nothing; wkv7::sequence fills it");
  if (saved.shape() != shape || saved.decay() != opt.decay)
    throw shape_error(std::string(context) + ": the record was filled by a call of shape " +
                      described(saved.shape(), saved.decay()) + ", this call is " + described(shape, opt.decay));
  if (saved.every() <= 0)
    throw shape_error(std::string(context) + ": the record needs every >= 1, got every = " +
                      std::to_string(saved.every()));
  if (saved.every() > max_every)
    throw shape_error(std::string(context) + ": a record every " + std::to_string(saved.every()) +
                      " tokens; the encoder takes at most " + std::to_string(max_every));
  // A record left by an earlier call of the same shape (a chunk whose wkv7::sequence was
  // skipped) passes the checks above; the fingerprint of its inputs tells it apart.
  if (saved.inputs_signature() != wkv7::detail::inputs_signature(wkv))
    throw value_error(std::string(context) +
                      ": the record was filled on other inputs (their first or last rows differ from this call's); "
                      "wkv7::sequence must fill it on the same inputs");
}

/// The work of `encode_recorded` (Fused false: e written to `e`) and of `evolve_recorded`
/// (Fused true: each block's e kept in scratch and run through the Meta-State recurrence on
/// M, whose readout goes to `o`). Arguments are checked by the callers.
template <bool Fused, class T, class S>
void recorded_pass(const wkv7::inputs<T>& wkv, const wkv7::record<S>& saved, sequence_view<const T> x,
                   sequence_view<T> e, state_view<S> m, sequence_view<T> o, int n, workspace<T>& ws,
                   const wkv7::options& opt) {
  const auto& shape = wkv.r.shape();
  const index_t B = shape[0], T_ = shape[1], H = shape[2], N = shape[3], every = saved.every();
  using batch = xsimd::batch<S, backend::default_simd_arch>;
  constexpr index_t L = static_cast<index_t>(batch::size);
  // Units are (batch, head, block) in that order. With at least as many (batch, head) items
  // as threads, each thread takes the items `wkv7::sequence` gives it on inputs that fit the
  // caches (a model's chunk; same formula) with all their blocks, so it reads the records its
  // own WKV-7 pass wrote, from its own caches (split by blocks, the two cores traded every
  // recorded line and the record cost 0.5 of the WKV-7 op on two threads instead of 0.2;
  // ad hoc, H = 12). Fewer items split the blocks
  // (the encoder alone: the fused pass runs a head's blocks in order, so its caller gives it
  // at least as many items as threads).
  const index_t blocks = (T_ + every - 1) / every, units = B * H * blocks;
  if (units == 0) return;
  int threads = resolve_threads(opt.exec);
  if (double(units) * every * n * n < wkv7::detail::parallel_min_updates) threads = 1;
  threads = static_cast<int>(std::min<index_t>(threads, Fused ? B * H : units));
  // Channels padded with zeros to whole vectors (decays with ones), and a block's (u, v) pairs
  // to whole vectors (2·ep). Rows of the product: S_cᵀ for the padded channels (a zero row
  // past n), then u_τ, v_τ interleaved (zero rows past the block's tokens); a token's row of
  // z is [x̂_t, β_t0, κ_t0, β_t1, κ_t1, ...] to match.
  const index_t np = (n + L - 1) / L * L, ep = (every + L - 1) / L * L, inner = np + 2 * ep;
  // Per thread: w, b, k, x̃, v of a block (padded), b/P and k/P (interleaved token-major rows,
  // then transposed), P, z, e (rows of np), a zero row; every piece whole vectors. Fused:
  // also a and the block's ã_t = P_{t-1} ∘ a_t, 1/P_t and e_t/P_t (rows of np), the next
  // block's a, M's working copy (transposed) with its u and a readout row.
  const index_t encoder_scratch = 5 * every * np + 2 * ep * np + np * 2 * ep + np + every * inner + every * np + np,
                scratch = encoder_scratch + (Fused ? 4 * every * np + np + np * np + 2 * np : 0);
  // Reused as it is: every piece is written before it is read (the zero row at each block).
  ws.encoder.resize(static_cast<std::size_t>(threads * scratch));
  ws.encoder_rows.resize(static_cast<std::size_t>(threads * inner));
  // A thread's share of the inputs and record; beyond L2, the fused pass prefetches each
  // next unit's during the current one.
  const double share = double(B) * H / threads *
                       (double(T_) * N * (6 * sizeof(T) + sizeof(S)) + double(blocks) * N * N * sizeof(S));
  const bool prefetch = Fused && share > prefetch_min_bytes;
  const bool log_decay = opt.decay == wkv7::decay_input::log_w;
  const S tiny = std::ldexp(S(1), -100);
  // The deferred form scales M by up to 1/P: kept to blocks whose decays leave 88 of fp32's
  // 127 binary orders of magnitude for |M| (RWKV-7's w > 0.545 keeps P > 2⁻¹⁴ over 16 tokens).
  const S deferred_min = std::ldexp(S(1), -40);
  // Token rows c .. c + m - 1 of one head of `in` as S over the padded channels: the input
  // itself when it is S and whole vectors, else copies (decays from log-decays, padding).
  auto as_accum = [n, np, H, N](const sequence_view<const T>& in, index_t b, index_t c, index_t h, index_t m,
                                const S** rows, S* copies, bool exp, S pad) {
    const T* first = in.at(b, c, h);
    const index_t stride = H * N;
    if constexpr (std::is_same_v<T, S>)
      if (!exp && n == np) {
        for (index_t tau = 0; tau < m; ++tau) rows[tau] = first + tau * stride;
        return;
      }
    for (index_t tau = 0; tau < m; ++tau) {
      const T* from = first + tau * stride;
      S* copy = copies + tau * np;
      if (exp)
        for (int j = 0; j < n; ++j) copy[j] = std::exp(static_cast<S>(from[j]));
      else
        for (int j = 0; j < n; ++j) copy[j] = static_cast<S>(from[j]);
      std::fill(copy + n, copy + np, pad);
      rows[tau] = copy;
    }
  };

  // Fused: where a thread's M pieces start (the working copy, then u, then a readout row),
  // after its encoder pieces and the block's a, ã, 1/P, e/P rows and next block's a.
  auto m_working = [&](S* buffer) { return buffer + encoder_scratch + 4 * every * np + np; };

  // `next_unit`: the thread's next unit, or -1.
  auto run_unit = [&](index_t unit, index_t next_unit, S* buffer, const S** rows) {
    // Sizes as locals: the vector stores (may-alias types) would otherwise force reloads of
    // captured references inside the inner loops.
    const index_t nn = n, npad = np, epad = ep, b = unit / blocks / H, h = unit / blocks % H, block = unit % blocks,
                  c = block * every, m_ = std::min(every, T_ - c);
    S *w = buffer, *bk = w + every * npad, *kk = bk + every * npad, *xq = kk + every * npad, *v = xq + every * npad,
      *bk_rows = v + every * npad, *bkt = bk_rows + 2 * epad * npad, *P = bkt + npad * 2 * epad,
      *z = P + npad, *out = z + every * inner, *zero_row = out + every * npad;
    // Fused only: a, ã, 1/P, e/P (rows), the next block's a, then M's pieces (per thread).
    S *aa = zero_row + npad, *a_tilde = aa + every * npad, *inverse_rows = a_tilde + every * npad,
      *e_over_p = inverse_rows + every * npad, *a_following = e_over_p + every * npad, *X = m_working(buffer),
      *u = X + npad * npad, *o_row = u + npad;
    std::fill_n(zero_row, npad, S(0));
    auto row = [npad](S* base, index_t tau) { return base + tau * npad; };
    const S *wr[max_every], *br[max_every], *kr[max_every], *xr[max_every], *vr[max_every], *ar[max_every];
    as_accum(wkv.w, b, c, h, m_, wr, w, log_decay, S(1));
    as_accum(wkv.b, b, c, h, m_, br, bk, false, S(0));
    as_accum(wkv.k, b, c, h, m_, kr, kk, false, S(0));
    as_accum(x, b, c, h, m_, xr, xq, false, S(0));
    as_accum(wkv.v, b, c, h, m_, vr, v, false, S(0));
    if constexpr (Fused) as_accum(wkv.a, b, c, h, m_, ar, aa, false, S(0));
    // P_t, x̂_t, b/P and k/P; the smallest P decides the path. Tokens outer: with channels
    // outer (P in a register) the inputs' rows were read piecewise, 1.25x slower at H = 12.
    batch smallest(S(1));
    for (index_t j = 0; j < npad; j += L) batch(S(1)).store_unaligned(P + j);
    for (index_t tau = 0; tau < m_; ++tau) {
      S* zt = z + tau * inner;
      for (index_t j = 0; j < npad; j += L) {
        const batch before = batch::load_unaligned(P + j), p = before * batch::load_unaligned(wr[tau] + j);
        if constexpr (Fused) (before * batch::load_unaligned(ar[tau] + j)).store_unaligned(row(a_tilde, tau) + j);
        p.store_unaligned(P + j);
        (p * batch::load_unaligned(xr[tau] + j)).store_unaligned(zt + j);
        smallest = xsimd::min(smallest, p);
        const batch inverse = batch(S(1)) / p;
        if constexpr (Fused) inverse.store_unaligned(row(inverse_rows, tau) + j);
        (batch::load_unaligned(br[tau] + j) * inverse).store_unaligned(row(bk_rows, 2 * tau) + j);
        (batch::load_unaligned(kr[tau] + j) * inverse).store_unaligned(row(bk_rows, 2 * tau + 1) + j);
      }
    }
    alignas(64) S lanes[L];
    smallest.store_aligned(lanes);
    const S least = *std::min_element(lanes, lanes + L);
    const bool divided = least >= tiny;
    if (divided) {
      // β_tτ = (b_τ / P_τ) · x̂_t and κ_tτ for every pair τ ≤ t at once (the diagonal too,
      // where P cancels): one product of the block's x̂ by the interleaved rows b_τ/P_τ,
      // k_τ/P_τ transposed (channels as rows), written into z after x̂.
      std::fill(row(bk_rows, 2 * m_), row(bk_rows, 2 * epad), S(0));  // padding
      wkv7::detail::transpose(bk_rows, npad, 2 * epad, npad, bkt, 2 * epad);
      for (index_t j = 0; j < npad; ++j) rows[j] = bkt + j * 2 * epad;
      detail::encoder_product<batch>(m_, rows, npad, 0, z, inner, 2 * epad, 2, z + npad, inner);
    }
    for (index_t t = 0; t < m_; ++t) {
      S* zt = z + t * inner;
      S* pairs = zt + npad;  // β_tτ at 2τ, κ_tτ at 2τ + 1
      auto beta = [pairs](index_t tau) -> S& { return pairs[2 * tau]; };
      auto kappa = [pairs](index_t tau) -> S& { return pairs[2 * tau + 1]; };
      if (!divided) {
        // Carry x̃_t back through the decays: q ← w_τ ∘ q after reading b_τ · q, k_τ · q.
        S* q = zt;  // ends as x̂_t
        std::copy_n(xr[t], npad, q);
        for (index_t tau = t; tau >= 0; --tau) {
          batch sb(S(0)), sk(S(0));
          for (index_t j = 0; j < npad; j += L) {
            const batch qj = batch::load_unaligned(q + j);
            sb = xsimd::fma(batch::load_unaligned(br[tau] + j), qj, sb);
            sk = xsimd::fma(batch::load_unaligned(kr[tau] + j), qj, sk);
            (qj * batch::load_unaligned(wr[tau] + j)).store_unaligned(q + j);
          }
          beta(tau) = xsimd::hadd(sb);
          kappa(tau) = xsimd::hadd(sk);
        }
      }
      std::fill(pairs + 2 * (t + 1), pairs + 2 * epad, S(0));  // causal: later tokens do not count
    }
    const S* s_c = saved.states() + ((block * B + b) * H + h) * N * N;
    for (index_t j = 0; j < nn; ++j) rows[j] = s_c + j * N;
    for (index_t j = nn; j < npad; ++j) rows[j] = zero_row;
    for (index_t tau = 0; tau < epad; ++tau) {
      rows[npad + 2 * tau] = tau < m_ ? saved.removal() + ((b * T_ + c + tau) * H + h) * N : zero_row;
      rows[npad + 2 * tau + 1] = tau < m_ ? vr[tau] : zero_row;
    }
    if constexpr (Fused) {
      // e of the block into scratch (channels past n zero), then the Meta-State recurrence
      // over its tokens. Divided: in the deferred form X = M diag(1/P_t), whose update needs no
      // decay (X += u (b_t/P_t)ᵀ + e_t (e_t/P_t)ᵀ, o_t = X x̂_t, u_{t+1} = X ã_{t+1}), with the
      // block's P, b/P, x̂ shared with the encoder; X goes back to M at the block's end.
      detail::encoder_product<batch>(m_, rows, npad, 2, z, inner, nn, 0, out, npad);
      const bool deferred = least >= deferred_min;
      const index_t next = c + m_ < T_ ? c + m_ : -1;  // the next block's first token, if any
      const S* a_next = nullptr;
      if (next >= 0) as_accum(wkv.a, b, next, h, 1, &a_next, a_following, false, S(0));
      // The next unit's input rows, u rows and recorded state, a share at each token, where
      // they come from beyond L2 (see `prefetch_min_bytes`).
      const index_t ahead = prefetch ? next_unit : -1;
      const char* ahead_rows[7] = {};
      const char* ahead_state = nullptr;
      index_t ahead_m = 0;
      if (ahead >= 0) {
        const index_t ab = ahead / blocks / H, ah = ahead / blocks % H, ablock = ahead % blocks, ac = ablock * every;
        ahead_m = std::min(every, T_ - ac);
        const sequence_view<const T>* ins[6] = {&wkv.w, &wkv.b, &wkv.k, &x, &wkv.v, &wkv.a};
        for (int q = 0; q < 6; ++q) ahead_rows[q] = reinterpret_cast<const char*>(ins[q]->at(ab, ac, ah));
        ahead_rows[6] = reinterpret_cast<const char*>(saved.removal() + ((ab * T_ + ac) * H + ah) * N);
        ahead_state = reinterpret_cast<const char*>(saved.states() + ((ablock * B + ab) * H + ah) * N * N);
      }
      const index_t in_stride = H * N * index_t(sizeof(T)), in_lines = (N * index_t(sizeof(T)) + 63) / 64,
                    u_stride = H * N * index_t(sizeof(S)), u_lines = (N * index_t(sizeof(S)) + 63) / 64,
                    state_lines = (N * N * index_t(sizeof(S)) + 63) / 64;
      // A token's share of those lines goes to its sweep, one line per column, as far as the
      // sweep has columns (issued at once, the layer took 1.01-1.05x as long at H = 12,
      // median 1.03, and 1.05-1.07x at H = 32, ad hoc); the rest, and a share too large to
      // list, at once.
      const char* lines[max_listed_lines];
      for (index_t t = 0; t < m_; ++t) {
        index_t count = 0;
        if (ahead >= 0) {
          const index_t tau0 = ahead_m * t / m_, tau1 = ahead_m * (t + 1) / m_, l0 = state_lines * t / m_,
                        l1 = state_lines * (t + 1) / m_;
          const bool listed = (tau1 - tau0) * (6 * in_lines + u_lines) + (l1 - l0) <= max_listed_lines;
          auto issue = [&](const char* line) {
            if (listed)
              lines[count++] = line;
            else
              __builtin_prefetch(line, 0, 3);
          };
          for (index_t tau = tau0; tau < tau1; ++tau) {
            for (int q = 0; q < 6; ++q)
              for (index_t l = 0; l < in_lines; ++l) issue(ahead_rows[q] + tau * in_stride + l * 64);
            for (index_t l = 0; l < u_lines; ++l) issue(ahead_rows[6] + tau * u_stride + l * 64);
          }
          for (index_t l = l0; l < l1; ++l) issue(ahead_state + l * 64);
          for (index_t l = npad; l < count; ++l) __builtin_prefetch(lines[l], 0, 3);
          count = std::min(count, npad);
        }
        S* et = row(out, t);
        std::fill(et + nn, et + npad, S(0));
        const bool last = t + 1 == m_;
        // The readout straight into o where it is S and whole vectors (the copy had 1.5 % of
        // the pass's `perf` samples at H = 12).
        T* ot = o.at(b, c + t, h);
        S* readout = o_row;
        if constexpr (std::is_same_v<T, S>)
          if (nn == npad) readout = ot;
        if (deferred) {
          S* ept = row(e_over_p, t);
          for (index_t j = 0; j < npad; j += L)
            (batch::load_unaligned(et + j) * batch::load_unaligned(row(inverse_rows, t) + j)).store_unaligned(ept + j);
          if (last)  // X back to M (times P) in the same sweep; the next u from M (unused after the last block)
            recurrence_token<column_factor::after_readout, batch>(X, npad, P, row(bk_rows, 2 * t), ept, z + t * inner,
                                                                  a_next ? a_next : P, u, et, readout, lines, count);
          else
            recurrence_token<column_factor::none, batch>(X, npad, static_cast<const S*>(nullptr), row(bk_rows, 2 * t),
                                                         ept, z + t * inner, row(a_tilde, t + 1), u, et, readout, lines,
                                                         count);
        } else {
          recurrence_token<column_factor::before_update, batch>(X, npad, wr[t], br[t], et, xr[t],
                                                                last ? (a_next ? a_next : xr[t]) : ar[t + 1], u, et,
                                                                readout, lines, count);
        }
        if (readout == o_row)
          for (index_t i = 0; i < nn; ++i) ot[i] = static_cast<T>(o_row[i]);
      }
    } else if constexpr (std::is_same_v<T, S>) {  // straight into e
      detail::encoder_product<batch>(m_, rows, npad, 2, z, inner, nn, 0, e.at(b, c, h), H * nn);
    } else {
      detail::encoder_product<batch>(m_, rows, npad, 2, z, inner, nn, 0, out, npad);
      for (index_t t = 0; t < m_; ++t) {
        T* et = e.at(b, c + t, h);
        for (index_t i = 0; i < nn; ++i) et[i] = static_cast<T>(out[t * npad + i]);
      }
    }
  };
  const index_t items = B * H;
  auto run_thread = [&](int tid) {
    S* buffer = ws.encoder.data() + tid * scratch;
    const S** rows = ws.encoder_rows.data() + tid * inner;
    const index_t first = items >= threads ? items * tid / threads * blocks : units * tid / threads,
                  last = items >= threads ? items * (tid + 1) / threads * blocks : units * (tid + 1) / threads;
    for (index_t unit = first; unit < last; ++unit) {
      if constexpr (Fused) {
        S* X = m_working(buffer);
        S* u = X + np * np;
        if (unit % blocks == 0) {  // a new head: M into its working copy, u_0 = M_0 a_0
          const index_t b = unit / blocks / H, h = unit / blocks % H;
          if (n < np) std::fill_n(X, np * np, S(0));  // padding (else the transpose writes all of X)
          wkv7::detail::transpose(m.at(b, h), n, n, n, X, np);
          const S* a0 = nullptr;
          as_accum(wkv.a, b, 0, h, 1, &a0, u + np, false, S(0));  // (the readout row as the copy)
          column_product<batch>(X, np, a0, u);
        }
        run_unit(unit, unit + 1 < last ? unit + 1 : -1, buffer, rows);
        if (unit % blocks == blocks - 1) {  // the head's last block: M back
          const index_t b = unit / blocks / H, h = unit / blocks % H;
          wkv7::detail::transpose(X, np, n, n, m.at(b, h), n);
        }
      } else {
        run_unit(unit, unit + 1 < last ? unit + 1 : -1, buffer, rows);
      }
    }
  };
  run_threads(threads, run_thread);
}

}  // namespace detail

/// Encoder over a sequence from what `wkv7::sequence` recorded for the same inputs
/// (`saved`: the state at the start of every block of `saved.every` tokens, transposed, and
/// u_t of every token): e [B,T,H,n] = S_t[:n,:n] x̃_t[:n] without replaying the recurrence.
/// In a block from the state S_c before its first token c,
///   S_t = S_c D_{c..t} + Σ_{c≤τ≤t} (u_τ b_τᵀ + v_τ k_τᵀ) D_{τ+1..t},  D_{i..j} = diag(w_i ∘ ⋯ ∘ w_j),
/// so, over channels < n, with P_t = w_c ∘ ⋯ ∘ w_t,
///   e_t = S_c x̂_t + Σ_{τ≤t} (β_tτ u_τ + κ_tτ v_τ),   x̂_t = P_t ∘ x̃_t,
///   β_tτ = (b_τ / P_τ) · x̂_t,  κ_tτ = (k_τ / P_τ) · x̂_t  (τ ≤ t),
/// the β, κ of a block as one product of its x̂ by the (transposed) b/P, k/P, then one product
/// of its [x̂ β κ] (every x (n + 2·every)) by the rows [S_cᵀ; u; v]: about n² + 3n·every
/// multiply-adds per token (less the part of the every-terms that causality skips) instead of
/// a second pass over the N² state.
/// A block whose decays multiply to below 2⁻¹⁰⁰ (far below RWKV-7's w > 0.545 over a
/// block) is not divided by them: its β, κ come from carrying each query back through
/// the decays, exactly.
template <class T, class S>
void encode_recorded(const wkv7::inputs<T>& wkv, const wkv7::record<S>& saved, sequence_view<const T> x,
                     sequence_view<T> e, int n, workspace<T>& ws, const wkv7::options& opt = {}) {
  static_assert(std::is_same_v<S, accum_t<T>>, "THE_STATE_MUST_HAVE_THE_ACCUMULATE_TYPE_OF_THE_STORAGE_TYPE");
  const char* context = "meta_state::encode_recorded";
  detail::check_recorded(context, wkv, saved, x, n, opt);
  const auto& shape = wkv.r.shape();
  expect_shape(context, "e", e.shape(), std::array<index_t, 4>{shape[0], shape[1], shape[2], n});
  detail::expect_data(context, "e", e);
  expect_disjoint(context, std::array{bytes_of("e", e)},
                  std::array{bytes_of("r", wkv.r), bytes_of("w", wkv.w), bytes_of("k", wkv.k), bytes_of("v", wkv.v),
                             bytes_of("a", wkv.a), bytes_of("b", wkv.b), bytes_of("x", x)});
  detail::recorded_pass<false>(wkv, saved, x, e, state_view<S>(), sequence_view<T>(), n, ws, opt);
}

/// Evolution and readout over T tokens: M [B,H,n,n] holds M_0 on entry and M_T on return;
/// o [B,T,H,n] receives M_t x̃_t[:n]. The transition is w, a, b [B,T,H,N] (the layer's own,
/// first n channels used), `e` is [B,T,H,n], `x` (x̃) is [B,T,H,N].
template <int Nn = dynamic, class Backend = backend::default_backend, class T, class S>
void evolve(sequence_view<const T> w, sequence_view<const T> a, sequence_view<const T> b, sequence_view<const T> e,
            sequence_view<const T> x, state_view<S> m, sequence_view<T> o, workspace<T>& ws,
            const wkv7::options& opt = {}) {
  static_assert(!detail::is_cuda<Backend> || METASTATE_CUDA_COMPILER,
                "THE_CUDA_BACKEND_NEEDS_NVCC_AND_THE_METASTATE_CUDA_HEADERS");
  expect_extents("meta_state::evolve", "w", w.shape());
  expect_extents("meta_state::evolve", "m", m.shape());
  const int n = static_cast<int>(m.head_size());
  detail::check_sse_dim("meta_state::evolve", n, w.head_size());
  if (Nn != dynamic && n != Nn)
    throw shape_error("meta_state::evolve: tensor 'm' has head size " + std::to_string(n) +
                      ", the template head size is " + std::to_string(Nn));
  for (const auto& [name, view] : {std::pair{"a", &a}, std::pair{"b", &b}, std::pair{"x", &x}})
    expect_shape("meta_state::evolve", name, view->shape(), w.shape());
  expect_shape("meta_state::evolve", "e", e.shape(), std::array<index_t, 4>{w.batch(), w.tokens(), w.heads(), n});
  expect_shape("meta_state::evolve", "o", o.shape(), std::array<index_t, 4>{w.batch(), w.tokens(), w.heads(), n});
  expect_shape("meta_state::evolve", "m", m.shape(), std::array<index_t, 4>{w.batch(), w.heads(), n, n});
  for (const auto& [name, view] : {std::pair{"w", &w}, std::pair{"a", &a}, std::pair{"b", &b}, std::pair{"e", &e},
                                   std::pair{"x", &x}})
    detail::expect_data("meta_state::evolve", name, *view);
  detail::expect_data("meta_state::evolve", "m", m);
  detail::expect_data("meta_state::evolve", "o", o);
  detail::check_threads("meta_state::evolve", opt);
  expect_disjoint("meta_state::evolve", std::array{bytes_of("o", o), bytes_of("m", m)},
                  std::array{bytes_of("w", w), bytes_of("a", a), bytes_of("b", b), bytes_of("e", e), bytes_of("x", x)});
  // The Meta-State recurrence IS the WKV-7 op with (r, k, v) = (x̃, e, e) on the first n channels.
  if constexpr (detail::is_cuda<Backend>) {
    device_evolve(detail::on_device{}, std::integral_constant<int, Nn>{}, w, a, b, e, x, m, o, opt);
  } else {
    detail::validate_named<T>("meta_state::evolve", w, opt.decay, {{"w", w}, {"a", a}, {"b", b}, {"e", e}, {"x", x}});
    if constexpr (METASTATE_VALIDATE_VALUES) wkv7::detail::expect_finite("meta_state::evolve", "m", m.data(), m.size());
    const auto wn = detail::leading(w, n, ws.w), an = detail::leading(a, n, ws.a), bn = detail::leading(b, n, ws.b),
               xn = detail::leading(x, n, ws.x);
    wkv7::sequence<Nn, Backend>(wkv7::inputs<T>{xn, wn, e, e, an, bn}, m, o, opt);
  }
}

/// The Meta-State layer's recurrent work over a sequence from what `wkv7::sequence`
/// recorded for the same inputs: the same results as `encode_recorded` then `evolve` (M
/// [B,H,n,n] holds M_0 on entry and M_T on return; o [B,T,H,n] receives M_t x̃_t[:n]), with
/// the transition work shared: block by block, the encoder's cumulative decays P_t, b_t/P_t
/// and x̂_t = P_t ∘ x̃_t also drive M in the deferred form X = M diag(1/P_t), whose update
/// X += u_t (b_t/P_t)ᵀ + e_t (e_t/P_t)ᵀ needs 4 vector operations per element instead of the
/// WKV-7 op's 5 (o_t = X x̂_t, u_{t+1} = X (P_t ∘ a_{t+1})). Blocks whose decays multiply
/// below 2⁻⁴⁰ run the plain recurrence. A head's blocks run in order on one thread; with
/// fewer (batch, head) items than threads it runs `encode_recorded` (which splits the
/// blocks) then `evolve` (which splits M's rows) instead, whose results equal the one-pass
/// results only within rounding (every other op's are bit-identical for any thread count).
template <class T, class S>
void evolve_recorded(const wkv7::inputs<T>& wkv, const wkv7::record<S>& saved, sequence_view<const T> x,
                     state_view<S> m, sequence_view<T> o, int n, workspace<T>& ws, const wkv7::options& opt = {}) {
  static_assert(std::is_same_v<S, accum_t<T>>, "THE_STATE_MUST_HAVE_THE_ACCUMULATE_TYPE_OF_THE_STORAGE_TYPE");
  const char* context = "meta_state::evolve_recorded";
  detail::check_recorded(context, wkv, saved, x, n, opt);
  const auto& shape = wkv.r.shape();
  const index_t B = shape[0], T_ = shape[1], H = shape[2];
  expect_shape(context, "m", m.shape(), std::array<index_t, 4>{B, H, n, n});
  detail::expect_data(context, "m", m);
  expect_shape(context, "o", o.shape(), std::array<index_t, 4>{B, T_, H, n});
  detail::expect_data(context, "o", o);
  expect_disjoint(context, std::array{bytes_of("o", o), bytes_of("m", m)},
                  std::array{bytes_of("r", wkv.r), bytes_of("w", wkv.w), bytes_of("k", wkv.k), bytes_of("v", wkv.v),
                             bytes_of("a", wkv.a), bytes_of("b", wkv.b), bytes_of("x", x)});
  int threads = resolve_threads(opt.exec);
  if (double(B) * H * T_ * n * n < wkv7::detail::parallel_min_updates) threads = 1;
  if (B * H >= threads) {
    detail::recorded_pass<true>(wkv, saved, x, sequence_view<T>(), m, o, n, ws, opt);
    return;
  }
  ws.encoded.resize(static_cast<std::size_t>(B * T_ * H * n));
  const sequence_view<T> e(ws.encoded.data(), B, T_, H, n);
  encode_recorded(wkv, saved, x, e, n, ws, opt);
  evolve(wkv.w, wkv.a, wkv.b, sequence_view<const T>(e), x, m, o, ws, opt);
}

}  // namespace metastate::meta_state
