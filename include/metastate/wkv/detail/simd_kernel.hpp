// WKV-7 `simd` backend: fused xsimd kernels for float arithmetic and head sizes that are a
// multiple of the lane count.
#pragma once
#include "metastate/detail/internal_header_check.hpp"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <xsimd/xsimd.hpp>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "metastate/wkv/detail/driver.hpp"

namespace metastate::wkv7::detail {

/// out[q] = the sum of the lanes of acc[q], for the batch's lane count of rows: xsimd::haddp,
/// except for 16-lane float, where xsimd 8's haddp returns the sums in a permuted order
/// (rows 2-3 and 4-5, 10-11 and 12-13 swapped; the tests catch it). There a butterfly of
/// two-vector shuffles (GCC's 512-bit extract intrinsics raise -Wuninitialized in GCC 12)
/// halves the lanes per row four times, each level adding pairs of rows' halves.
/// Always inlined: called out of line, it takes the sums' address and keeps the caller's
/// accumulators in memory (a load and a store per FMA in the step kernel).
template <class Batch>
METASTATE_ALWAYS_INLINE Batch lane_sums(const Batch* acc) {
#if XSIMD_WITH_AVX512F
  if constexpr (Batch::size == 16 && std::is_same_v<typename Batch::value_type, float>) {
    using v16 = float __attribute__((vector_size(64)));
    v16 c[8], d[4], e[2];
    for (int q = 0; q < 8; ++q) {  // lanes: row q (8), row q + 8 (8)
      const v16 x = static_cast<__m512>(acc[q]), y = static_cast<__m512>(acc[q + 8]);
      c[q] = __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(x, y, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    }
    for (int q = 0; q < 4; ++q)  // rows q, q + 4, q + 8, q + 12 (4 each)
      d[q] = __builtin_shufflevector(c[q], c[q + 4], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
             __builtin_shufflevector(c[q], c[q + 4], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int q = 0; q < 2; ++q)  // rows q, q + 2, q + 4, ... (2 each)
      e[q] = __builtin_shufflevector(d[q], d[q + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
             __builtin_shufflevector(d[q], d[q + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    return static_cast<__m512>(
        __builtin_shufflevector(e[0], e[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
        __builtin_shufflevector(e[0], e[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31));
  }
#endif
  return xsimd::haddp(acc);
}

/// Token-at-a-time kernel on the state in its own layout (row = value index). Used for
/// `step` and short sequences. Per block of L rows: one pass forms u = S a for the L rows,
/// a second pass updates them and forms y; the L horizontal sums of each pass are done
/// together by one `lane_sums`. The next block's u is formed before this block's update, so
/// the update never waits on the sums just formed (one head's step 1.12-1.15x and twelve heads'
/// 1.08-1.12x faster than u then update per block, ad hoc).
template <class Arch, class T, int N>
class simd_row_unit {
  using batch = xsimd::batch<float, Arch>;
  static constexpr int L = static_cast<int>(batch::size);

 public:
  simd_row_unit(const problem<T, float>& p, const unit& u, float* /*scratch: none*/)
      : p_(p), u_(u), load_(p, u.b, u.h), s_(p.state.at(u.b, u.h)) {}

  void token(index_t t) {
    const auto x = load_.load(t);
    float* y = load_.y_target(t);
    float* saved_removal = p_.removal_target(u_.b, t, u_.h);
    alignas(64) float removal[2][L];  // u of this block and of the next
    removal_of(x, u_.row0, removal[0], saved_removal);
    int current = 0;
    for (int i0 = u_.row0; i0 < u_.row1; i0 += L, current ^= 1) {
      if (i0 + L < u_.row1) removal_of(x, i0 + L, removal[current ^ 1], saved_removal);
      update(x, i0, removal[current], y);
    }
    load_.commit_y(t, u_.row0, u_.row1);
  }

  void finish() {}
  void store(float* dst) const { store_transposed(s_, dst, u_.row0, u_.row1, p_.n); }

 private:
  using token_inputs = typename token_loader<T, float, N>::token;

  /// u of the L rows from i0: each row read in address order. The row loops are unrolled
  /// so the L sums live in registers.
  void removal_of(const token_inputs& x, int i0, float* removal, float* saved_removal) {
    const int n = head_size<N>(p_.n).value();
    const float* block = s_ + static_cast<index_t>(i0) * n;
    batch acc[L];
#pragma GCC unroll 16
    for (int q = 0; q < L; ++q) {
      const float* row = block + q * n;
      acc[q] = batch::load_unaligned(row) * batch::load_unaligned(x.a);
      for (int j = L; j < n; j += L)
        acc[q] = xsimd::fma(batch::load_unaligned(row + j), batch::load_unaligned(x.a + j), acc[q]);
    }
    lane_sums(acc).store_aligned(removal);
    if (saved_removal) std::copy_n(removal, L, saved_removal + i0);
  }

  /// Updates the L rows from i0 and writes their y. Columns outer, rows inner: the key-axis
  /// vectors are loaded once for the L rows. The row scalars u_q, v_q are broadcast inside
  /// the loop (memory operands of the FMAs): held as L vectors each, they would not fit the
  /// registers beside the L sums at 16 lanes.
  void update(const token_inputs& x, int i0, const float* removal, float* y) {
    const int n = head_size<N>(p_.n).value();
    float* block = s_ + static_cast<index_t>(i0) * n;
    const float* v_rows = x.v + i0;
    batch acc[L];
    for (int q = 0; q < L; ++q) acc[q] = batch(0.f);
    for (int j = 0; j < n; j += L) {
      const batch w = batch::load_unaligned(x.w + j), b = batch::load_unaligned(x.b + j),
                  k = batch::load_unaligned(x.k + j), r = batch::load_unaligned(x.r + j);
#pragma GCC unroll 16
      for (int q = 0; q < L; ++q) {
        float* cell = block + q * n + j;
        batch s = batch::load_unaligned(cell) * w;
        s = xsimd::fma(batch(removal[q]), b, s);
        s = xsimd::fma(batch(v_rows[q]), k, s);
        s.store_unaligned(cell);
        acc[q] = xsimd::fma(s, r, acc[q]);
      }
    }
    lane_sums(acc).store_unaligned(y + i0);
  }

  const problem<T, float>& p_;
  unit u_;
  token_loader<T, float, N> load_;
  float* s_;
};

/// Sequence kernel on a private TRANSPOSED copy of the unit's rows (column j of those rows
/// contiguous), so a vector holds L rows and no horizontal sum is ever needed. One pass per
/// token updates the state, forms y = S_t r_t, and already forms the next token's
/// u = S_t a_{t+1} (removing the u -> update dependency of a two-pass kernel). Blocks of `RB`
/// row vectors share the five broadcast key-axis values of each column. The copy is private
/// to the unit, so threads splitting one state's rows never share a cache line.
template <class Arch, class T, int N>
class simd_transposed_unit {
  using batch = xsimd::batch<float, Arch>;
  static constexpr int L = static_cast<int>(batch::size);
  static constexpr int RB = 4;

 public:
  /// On inputs beyond the caches, threads split every head's rows (whole input rows each)
  /// rather than the heads (`run_units`). (The eigen kernel ran no faster on two threads
  /// than on one that way, against 1.29x split by heads; the scalar one scales either way.)
  static constexpr bool split_rows_beyond_caches = true;

  /// The transposed rows, then u of the state's n rows (the unit uses its own rows of it).
  static std::size_t scratch_size(const problem<T, float>& p, const unit& u) {
    return static_cast<std::size_t>(u.row1 - u.row0 + 1) * p.n;
  }

  simd_transposed_unit(const problem<T, float>& p, const unit& u, float* scratch)
      : p_(p), u_(u), load_(p, u.b, u.h), s_(p.state.at(u.b, u.h)), rows_(u.row1 - u.row0), work_(scratch),
        removal_(scratch + static_cast<std::size_t>(rows_) * p.n),
        stream_outputs_(std::is_same_v<T, float> &&
                        (p.y.size() * sizeof(float) >= stream_min_bytes || u.row1 - u.row0 < p.n)) {
    const int n = head_size<N>(p_.n).value();
    // Where the record takes the states from the sweep, S_0 goes straight into its slot, which
    // the first token reads (a copy less: 1 % of the op at H = 12, ad hoc).
    float* first = records_in_sweep() ? p.state_target(u.b, 0, u.h) : work_;
    transpose(s_ + static_cast<index_t>(u_.row0) * n, n, rows_, n, first, rows_);
    if (first != work_) recorded_ = first;
    // u for the first token: u = S_0 a_0, column by column (and into the record, if any).
    const float* a = load_.load_a_ahead(0);
    float* saved = p_.removal_target(u_.b, 0, u_.h);
    for (int i = 0; i < rows_; i += L) {
      batch acc(0.f);
      for (int j = 0; j < n; ++j)
        acc = xsimd::fma(batch::load_unaligned(first + static_cast<std::size_t>(j) * rows_ + i), batch(a[j]), acc);
      acc.store_unaligned(removal_ + u_.row0 + i);
      if (saved) store_output(acc, saved + u_.row0 + i);
    }
  }

  void token(index_t t) {
    const auto x = load_.load(t);
    // The last token has no successor; its "next u" is computed from its own a and unused.
    const float* a_next = t + 1 < p_.tokens ? load_.load_a_ahead(t + 1) : x.a;
    float* y = load_.y_target(t);
    // The sweep records the next token's u as it forms it (copied at the next token from
    // the unit's u, the record cost 0.015-0.024 of the op more at H = 12, ad hoc).
    float* saved = t + 1 < p_.tokens ? p_.removal_target(u_.b, t + 1, u_.h) : nullptr;
    if (recorded_ || recording_)
      sweep<true>(x, a_next, y, saved);
    else
      sweep<false>(x, a_next, y, saved);
    load_.commit_y(t, u_.row0, u_.row1);
    recorded_ = std::exchange(recording_, nullptr);
  }

  /// Whether the unit writes its record's states from its sweep (`store_after_token`) instead
  /// of copying them (`store`): where there is a record, it goes through the caches and the
  /// unit has all rows (so its copy has the record's layout). With a 16 KiB copy per recorded state, a
  /// record every 16 tokens cost 0.09-0.12 of the op at H = 12 and 0.07 at H = 1; written by
  /// the sweep, 0.06 and 0.03-0.05 (ad hoc, AVX2; docs/PERFORMANCE.md, session 16).
  bool records_in_sweep() const { return p_.every > 0 && !stream_outputs_ && rows_ == p_.n; }

  /// The next token writes its state into the transposed n x n `dst` instead of the working
  /// copy, and the token after reads it from there (`records_in_sweep` units only, which put
  /// S_0 into its slot themselves; never for the last token: `finish` reads the working copy).
  void store_after_token(float* dst) { recording_ = dst; }

  /// Writes the unit's rows of the current state into the transposed n x n `dst`: the
  /// private copy already has that layout, one contiguous run per column. Like y, it goes
  /// around the caches where y does (`store_output`): for a unit with part of the rows, two
  /// cores writing halves of every column through them made a 128-token call of one head
  /// with its record 2.5x slower than without (ad hoc).
  void store(float* dst) const {
    const int n = head_size<N>(p_.n).value();
    for (int j = 0; j < n; ++j) {
      const float* from = work_ + static_cast<std::size_t>(j) * rows_;
      float* to = dst + static_cast<index_t>(j) * n + u_.row0;
      for (int q = 0; q < rows_; q += L) store_output(batch::load_unaligned(from + q), to + q);
    }
  }

  /// Writes the unit's rows back into the caller's state.
  void finish() {
#if defined(__AVX__)
    if (stream_outputs_) _mm_sfence();  // the streamed stores are weakly ordered
#endif
    const int n = head_size<N>(p_.n).value();
    transpose(work_, rows_, n, rows_, s_ + static_cast<index_t>(u_.row0) * n, n);
  }

 private:
  /// One token's update of all the unit's rows, in place, or (`Moves`) from `recorded_` or
  /// the working copy to `recording_` or the working copy. (Separate code: with two pointers
  /// where one would do, the op without a record ran 3 % slower, ad hoc.)
  template <bool Moves>
  METASTATE_ALWAYS_INLINE void sweep(const typename token_loader<T, float, N>::token& x, const float* a_next, float* y,
                                     float* saved) {
    const float* from = Moves && recorded_ ? recorded_ : work_;
    float* to = Moves && recording_ ? recording_ : work_;
    int i = u_.row0;
    for (; i + RB * L <= u_.row1; i += RB * L) rows<RB, Moves>(i, x, a_next, y, from, to, saved);
    // Two threads splitting a state's 64 rows get 32 each: two 16-lane vectors.
    for (; i + 2 * L <= u_.row1; i += 2 * L) rows<2, Moves>(i, x, a_next, y, from, to, saved);
    for (; i < u_.row1; i += L) rows<1, Moves>(i, x, a_next, y, from, to, saved);
  }

  // The state is read from `from` and written to `to` where `Moves` (else in place in the
  // working copy); the next u also goes to `saved`, if any. Always inlined into `token`: out
  // of line (as GCC chose once the token had less code), one thread ran 5 % slower (ad hoc,
  // AVX2).
  template <int R, bool Moves>
  METASTATE_ALWAYS_INLINE void rows(int i0, const typename token_loader<T, float, N>::token& x, const float* a_next,
                                    float* y, const float* from, float* to, float* saved) {
    const int n = head_size<N>(p_.n).value();
    float* removal = removal_;
    // Even and odd columns keep separate sums (where 32 vector registers hold them): at 2
    // row vectors, as two threads splitting a state's rows run, a column's work (5 cycles)
    // comes near the 4-cycle latency of each sum's FMA chain (1.07x faster at H = 1, ad hoc).
    // At 4 vectors it is no faster, but every block size adds in the same order, so results
    // do not depend on the thread count.
    constexpr int P = L == 16 ? 2 : 1;
    batch u[R], v[R], out[P][R], next[P][R];
    for (int q = 0; q < R; ++q) {
      u[q] = batch::load_unaligned(removal + i0 + q * L);
      v[q] = batch::load_unaligned(x.v + i0 + q * L);
      for (int parity = 0; parity < P; ++parity) out[parity][q] = next[parity][q] = batch(0.f);
    }
    // Pointers and stride as locals, the column pointer stepped: with the members and
    // a column accessor, GCC recomputed each column's address from spilled values (static head
    // size; 1.2x slower than the run-time head size in one binary, ad hoc).
    const float *xw = x.w, *xb = x.b, *xk = x.k, *xr = x.r;
    const std::size_t stride = static_cast<std::size_t>(rows_);
    const float* in = from + (i0 - u_.row0);  // (read where Moves, else col)
    float* col = to + (i0 - u_.row0);
    for (int j = 0; j < n; j += P) {  // n is a multiple of the lane count, so of P
      for (int parity = 0; parity < P; ++parity, in += Moves ? stride : 0, col += stride) {
        const int c = j + parity;
        const batch w(xw[c]), b(xb[c]), k(xk[c]), r(xr[c]), a(a_next[c]);
        for (int q = 0; q < R; ++q) {
          batch s = batch::load_unaligned((Moves ? in : col) + q * L) * w;
          s = xsimd::fma(u[q], b, s);
          s = xsimd::fma(v[q], k, s);
          s.store_unaligned(col + q * L);
          out[parity][q] = xsimd::fma(s, r, out[parity][q]);
          next[parity][q] = xsimd::fma(s, a, next[parity][q]);
        }
      }
    }
    for (int q = 0; q < R; ++q) {
      for (int parity = 1; parity < P; ++parity) {
        out[0][q] += out[parity][q];
        next[0][q] += next[parity][q];
      }
      store_output(out[0][q], y + i0 + q * L);
      next[0][q].store_unaligned(removal + i0 + q * L);
      if (saved) store_output(next[0][q], saved + i0 + q * L);
    }
  }

  /// An output larger than this goes around the caches (non-temporal stores): when two
  /// threads write neighbouring heads' pieces of every token's y row through the caches,
  /// the cores' traffic on those lines costs up to a third of the two-thread speed-up
  /// (docs/PERFORMANCE.md). Smaller outputs, which the caller reads back from the caches
  /// (a model's chunk), are stored normally, unless threads split the head's rows: then
  /// two cores write halves of the same y row at every token, which through the caches made
  /// 128-token calls of one head up to 1.6x slower, depending on where y lay (ad hoc). A
  /// record (u and states) goes the way y goes.
  static constexpr std::size_t stream_min_bytes = std::size_t(1) << 20;

  void store_output(const batch& v, float* dst) const {
#if defined(__AVX__)
    const auto address = reinterpret_cast<std::uintptr_t>(dst);
    if (stream_outputs_ && address % 16 == 0) {  // malloc'ed buffers are 16-byte aligned
      if constexpr (sizeof(batch) == 32) {
        const __m256 x = v;
        if (address % 32 == 0) {
          _mm256_stream_ps(dst, x);
        } else {
          _mm_stream_ps(dst, _mm256_castps256_ps128(x));
          _mm_stream_ps(dst + 4, _mm256_extractf128_ps(x, 1));
        }
        return;
      }
#if defined(__AVX512F__)
      if constexpr (sizeof(batch) == 64) {
        const __m512 x = v;
        if (address % 64 == 0) {
          _mm512_stream_ps(dst, x);
        } else {
          _mm_stream_ps(dst, _mm512_extractf32x4_ps(x, 0));
          _mm_stream_ps(dst + 4, _mm512_extractf32x4_ps(x, 1));
          _mm_stream_ps(dst + 8, _mm512_extractf32x4_ps(x, 2));
          _mm_stream_ps(dst + 12, _mm512_extractf32x4_ps(x, 3));
        }
        return;
      }
#endif
    }
#endif
    v.store_unaligned(dst);
  }

  const problem<T, float>& p_;
  unit u_;
  token_loader<T, float, N> load_;
  float* s_;
  int rows_;
  float* work_;     // the unit's rows, transposed: column j at work_ + j * rows_
  float* removal_;  // u, indexed by state row
  const float* recorded_ = nullptr;  // where the state is, if not in the working copy
  float* recording_ = nullptr;       // where the next token writes it, if not there
  bool stream_outputs_;  // y and the record go around the caches: see `stream_min_bytes`
};

/// The lane count of the simd backend's arithmetic on `Arch`.
template <class Arch>
inline constexpr int simd_lanes = static_cast<int>(xsimd::batch<float, Arch>::size);

/// Sequences at least this long pay for the two transposing copies of the state.
inline constexpr index_t transposed_min_tokens = 4;

}  // namespace metastate::wkv7::detail
