// WKV-7 driver: the problem description, per-token input loading, and the threaded unit loop.
#pragma once
#include "metastate/detail/internal_header_check.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "metastate/core/aligned.hpp"
#include "metastate/core/head_size.hpp"
#include "metastate/core/parallel.hpp"
#include "metastate/core/views.hpp"

namespace metastate::wkv7 {

/// How the decay tensor `w` is given: the decay itself, `w ∈ (0, 1]`, or its log, `λ = log w ≤ 0`.
enum class decay_input { w, log_w };

/// The six per-token inputs of the WKV-7 op, each `[B, T, H, N]`.
template <class T>
struct inputs {
  sequence_view<const T> r, w, k, v, a, b;
};

}  // namespace metastate::wkv7

namespace metastate::wkv7::detail {

/// Everything a kernel needs; shapes were checked by the public entry point.
template <class T, class A>
struct problem {
  inputs<T> in;
  state_view<A> state;
  sequence_view<T> y;
  decay_input decay;
  index_t batch, tokens, heads;
  int n;
  /// Optional record for the Meta-State encoder (see `wkv7::record`): the state, transposed,
  /// before every `every`-th token, and u_t of every token ([B,T,H,N]).
  A* saved_states = nullptr;
  A* saved_removal = nullptr;
  index_t every = 0;

  /// Where u_t of (b, h) goes, or null when nothing is recorded.
  A* removal_target(index_t b, index_t t, index_t h) const {
    return saved_removal ? saved_removal + ((b * tokens + t) * heads + h) * n : nullptr;
  }
  /// Where the state of (b, h) before token t (a multiple of `every`) goes, when recording.
  A* state_target(index_t b, index_t t, index_t h) const {
    return saved_states + ((t / every * batch + b) * heads + h) * n * n;
  }
};

#if defined(__AVX__)
/// The widest float vector the compiler targets, as a GCC vector: the transposes' tile width.
#if XSIMD_WITH_AVX512F
inline constexpr int transpose_width = 16;
#else
inline constexpr int transpose_width = 8;
#endif
using transpose_vector = float __attribute__((vector_size(4 * transpose_width)));
/// The same for loads and stores at any float's alignment.
using transpose_unaligned = float __attribute__((vector_size(4 * transpose_width), aligned(4), may_alias));

/// One stage of a W x W float transpose: swaps the off-diagonal B x B blocks of rows x, y.
template <int B, int... K>
void transpose_stage(transpose_vector& x, transpose_vector& y, std::integer_sequence<int, K...>) {
  constexpr int W = transpose_width;
  const auto lo = __builtin_shufflevector(x, y, ((K & B) == 0 ? K : W + K - B)...);
  const auto hi = __builtin_shufflevector(x, y, ((K & B) == 0 ? K + B : W + K)...);
  x = lo;
  y = hi;
}
#endif

/// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < columns (both multiples
/// of the vector width W for the vector path: log2 W stages of two-row shuffles per W x W
/// tile; 16 with AVX-512, 8 with AVX).
template <class S>
void transpose(const S* src, index_t src_stride, index_t rows, index_t columns, S* dst, index_t dst_stride) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<S, float>) {
    constexpr int W = transpose_width;
    if (rows % W == 0 && columns % W == 0) {
      const auto lanes = std::make_integer_sequence<int, W>{};
      for (index_t r0 = 0; r0 < rows; r0 += W)
        for (index_t c0 = 0; c0 < columns; c0 += W) {
          transpose_vector x[W];
          // (Whole-vector loads and stores: as memcpy in a loop GCC made the 8-wide tile two
          // 16-byte copies through the stack, which the shuffles then read back whole.)
#pragma GCC unroll 16
          for (int q = 0; q < W; ++q) x[q] = *reinterpret_cast<const transpose_unaligned*>(src + (r0 + q) * src_stride + c0);
          for (int q = 0; q < W; ++q) {  // row pairs (q, q + B) with bit B of q clear
            if ((q & 1) == 0) transpose_stage<1>(x[q], x[q + 1], lanes);
          }
          for (int q = 0; q < W; ++q) {
            if ((q & 2) == 0) transpose_stage<2>(x[q], x[q + 2], lanes);
          }
          for (int q = 0; q < W; ++q) {
            if ((q & 4) == 0) transpose_stage<4>(x[q], x[q + 4], lanes);
          }
          if constexpr (W == 16)
            for (int q = 0; q < 8; ++q) transpose_stage<8>(x[q], x[q + 8], lanes);
#pragma GCC unroll 16
          for (int q = 0; q < W; ++q) *reinterpret_cast<transpose_unaligned*>(dst + (c0 + q) * dst_stride + r0) = x[q];
        }
      return;
    }
  }
#endif
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < columns; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
}

/// Writes rows [row0, row1) of the n x n row-major `state` into the transposed n x n `dst`.
template <class A>
void store_transposed(const A* state, A* dst, int row0, int row1, int n) {
  transpose(state + static_cast<index_t>(row0) * n, n, row1 - row0, n, dst + row0, n);
}

/// Fixed-size storage for a static head size, a vector for a dynamic one.
template <class A, int N, int Count>
using scratch = std::conditional_t<N == dynamic, std::vector<A>, std::array<A, (N == dynamic ? 1 : N * Count)>>;

/// Gives a unit the accumulate-type pointers of one token of one (batch, head): the storage
/// itself when it already is the accumulate type, else a converted copy (also `exp(λ)`).
template <class T, class A, int N>
class token_loader {
  static constexpr bool direct = std::is_same_v<std::remove_const_t<T>, A>;

 public:
  struct token {
    const A *r, *w, *k, *v, *a, *b;
  };

  // A dynamic head size allocates its buffer only when something must be converted; a
  // static one is left uninitialised (every slot is written before it is read).
  token_loader(const problem<T, A>& p, index_t b, index_t h) : p_(p), b_(b), h_(h), n_(p.n) {
    if constexpr (N == dynamic)
      if (!direct || p.decay != decay_input::w) buf_.resize(static_cast<std::size_t>(n_) * 8);
  }

  token load(index_t t) {
    const auto& in = p_.in;
    token tok;
    tok.r = get(in.r, t, 0);
    tok.k = get(in.k, t, 2);
    tok.v = get(in.v, t, 3);
    tok.a = get(in.a, t, 4);
    tok.b = get(in.b, t, 5);
    if (p_.decay == decay_input::log_w) {
      const T* src = in.w.at(b_, t, h_);
      A* dst = slot(1);
      for (int j = 0; j < n_; ++j) dst[j] = std::exp(static_cast<A>(src[j]));
      tok.w = dst;
    } else {
      tok.w = get(in.w, t, 1);
    }
    return tok;
  }

  /// `a` of token `t` in its own slot, so it can be held while token `t - 1` is processed.
  const A* load_a_ahead(index_t t) { return get(p_.in.a, t, 6); }

  /// Where the kernel writes y (rows [row0, row1)) for token t; then call `commit_y`.
  A* y_target(index_t t) {
    if constexpr (direct) return p_.y.at(b_, t, h_);
    else return slot(7);
  }
  void commit_y(index_t t, int row0, int row1) {
    if constexpr (!direct) {
      T* dst = p_.y.at(b_, t, h_);
      const A* src = slot(7);
      for (int i = row0; i < row1; ++i) dst[i] = static_cast<T>(src[i]);
    } else {
      (void)t, (void)row0, (void)row1;
    }
  }

 private:
  A* slot(int s) { return buf_.data() + static_cast<std::size_t>(s) * n_; }
  const A* get(const sequence_view<const T>& x, index_t t, int s) {
    const T* src = x.at(b_, t, h_);
    if constexpr (direct) {
      (void)s;
      return src;
    } else {
      A* dst = slot(s);
      for (int j = 0; j < n_; ++j) dst[j] = static_cast<A>(src[j]);
      return dst;
    }
  }

  const problem<T, A>& p_;
  index_t b_, h_;
  int n_;
  scratch<A, N, 8> buf_;
};

/// One piece of work: the rows [row0, row1) of the state of (b, h).
struct unit {
  index_t b, h;
  int row0, row1;
};

/// The scratch a unit needs for the length of a call (`Unit::scratch_size`), or none.
template <class Unit, class P>
auto unit_scratch_size(const P& p, const unit& u, int) -> decltype(Unit::scratch_size(p, u)) {
  return Unit::scratch_size(p, u);
}
template <class Unit, class P>
std::size_t unit_scratch_size(const P&, const unit&, long) {
  return 0;
}

/// Whether `Unit` asks threads on inputs beyond the caches to split every head's rows rather
/// than the heads (`Unit::split_rows_beyond_caches`; see `run_units`), or not.
template <class Unit>
constexpr auto splits_rows_beyond_caches(int) -> decltype(bool(Unit::split_rows_beyond_caches)) {
  return Unit::split_rows_beyond_caches;
}
template <class Unit>
constexpr bool splits_rows_beyond_caches(long) {
  return false;
}

/// Whether `Unit` can write recorded states from its sweep (`records_in_sweep` and
/// `store_after_token`; see `run_units`), or only copies them (`store`).
template <class Unit, class = void>
inline constexpr bool can_record_in_sweep = false;
template <class Unit>
inline constexpr bool can_record_in_sweep<
    Unit, std::void_t<decltype(bool(std::declval<const Unit&>().records_in_sweep())),
                      decltype(std::declval<Unit&>().store_after_token(nullptr))>> = true;

/// Per-thread scratch that outlives a call: a model's prefill calls the op once per chunk,
/// and allocating (and zeroing, and, past glibc's trim threshold, page-faulting) the units'
/// buffers at every call cost up to a sixth of its time (docs/PERFORMANCE.md). Cache-line
/// aligned: at malloc's alignment every vector access to a working state straddled two lines,
/// which cost a quarter of the sequence kernel's speed (units' scratch sizes are whole vectors,
/// so every unit's copy is aligned).
template <class A>
A* thread_arena(std::size_t count) {
  static thread_local aligned_vector<A> arena;
  if (arena.size() < count) arena.resize(count);
  return arena.data();
}

/// A thread's units of one call, built in storage that outlives the call (a vector of units
/// per call was a heap allocation at every call; the units themselves live for the call).
template <class Unit>
class thread_units {
 public:
  explicit thread_units(std::size_t capacity) : slots_(storage(capacity)) {}
  thread_units(const thread_units&) = delete;
  thread_units& operator=(const thread_units&) = delete;
  ~thread_units() {
    while (made_ > 0) (*this)[--made_].~Unit();
  }
  template <class... Args>
  void add(Args&&... args) {
    new (&slots_[made_]) Unit(std::forward<Args>(args)...);
    ++made_;
  }
  Unit& operator[](std::size_t i) { return *std::launder(reinterpret_cast<Unit*>(&slots_[i])); }

 private:
  struct alignas(Unit) slot {
    unsigned char bytes[sizeof(Unit)];
  };
  static slot* storage(std::size_t count) {
    static thread_local std::vector<slot> slots;
    if (slots.size() < count) slots.resize(count);
    return slots.data();
  }
  slot* slots_;
  std::size_t made_ = 0;
};

/// Tokens a thread runs on one unit before moving to its next unit, when its share of the
/// call's inputs is at most `blocked_max_input_bytes` (docs/PERFORMANCE.md). The bound
/// depends on the vector width: with 16 lanes (Zen 5) sweeping every state from L2 at each
/// token is what limits (12 heads' 128-token chunks ran at 0.69-0.73 of the peak in blocks,
/// about 0.62 in token order); with 8 lanes (Zen 4, AVX2) a token takes twice as long, L2
/// keeps up, and 32 heads' chunks (6 MiB) ran 1.22x faster in token order (ad hoc, in one
/// process; up to about 3 MiB per thread the two orders came within 3 %).
inline constexpr index_t token_block = 16;
inline constexpr double blocked_max_input_bytes = xsimd::batch<float>::size >= 16 ? 8 << 20 : 4 << 20;

/// Below this many state-element updates (about 30 us of work) a call runs on one thread:
/// forking and joining a team costs several microseconds (measured: a 12-head step took
/// 6 us on one thread and 12 us on two).
inline constexpr double parallel_min_updates = 1 << 18;

/// Runs `Unit` kernels over batch x heads (and, when those are fewer than the threads or when
/// a split by heads would leave threads reading pieces of input rows from memory, over row
/// blocks of `granularity` rows: rows are independent). Each thread runs its units over one
/// block of `token_block` tokens after another.
/// A unit is constructed (with its scratch) before its first token and `finish`ed after its
/// last; where a record asks for the state, `store` writes the unit's rows of it (transposed).
template <class Unit, class T, class A>
void run_units(const problem<T, A>& p, const exec_policy& policy, int granularity) {
  const index_t items = p.batch * p.heads;
  if (items == 0 || p.tokens == 0) return;
  // Small calls skip the OpenMP queries too (a step of one head takes about 300 ns).
  int threads = double(items) * p.tokens * p.n * p.n < parallel_min_updates ? 1 : resolve_threads(policy);
  const int row_groups = (p.n + granularity - 1) / granularity;
  const double input_bytes = 6.0 * sizeof(T) * p.in.r.size();
  // Inputs larger than the caches are read token by token (`block` below), whole rows in
  // order, which the hardware prefetchers follow. Threads splitting a batch row's heads would
  // each read pieces of every row, which they follow poorly (simd: two threads on 12 heads
  // scaled 1.74-1.87x against 1.92-1.97x with every head's rows split, ad hoc, AVX2); so
  // there units that ask for it have the threads split every head's rows, and each thread
  // reads whole rows. Threads with whole batch rows of their own keep whole heads (B = 2,
  // H = 1: 2.06x against 1.90x).
  const bool split_every_head = splits_rows_beyond_caches<Unit>(0) && threads > 1 && items >= threads &&
                                input_bytes / threads > blocked_max_input_bytes && p.batch % threads != 0;
  const int wanted = split_every_head     ? std::min(threads, row_groups)
                     : items >= threads ? 1
                                        : std::min<int>(row_groups, (threads + items - 1) / items);
  // As many parts as whole shares of row groups make: 8 groups for 6 threads are 4 parts of 2
  // (6 parts of 2 would leave the last two empty or reversed).
  const int groups_per_part = (row_groups + wanted - 1) / wanted;
  const int parts = (row_groups + groups_per_part - 1) / groups_per_part;
  const int rows_per_part = groups_per_part * granularity;
  const index_t units = items * parts;
  if (threads > units) threads = static_cast<int>(units);

  // Blocks of tokens, units inside, tokens innermost: a unit's state stays in L1 for a
  // block instead of being swept from L2 at every token. Inputs larger than the caches
  // are read token by token instead (block = 1): whole rows in order, which the hardware
  // prefetchers follow; one head's slices of a block's rows, they do not.
  const index_t block = input_bytes / threads <= blocked_max_input_bytes ? token_block : 1;
  // Units are numbered so that each thread's range holds whole heads (one part each), parts
  // of a head's rows that follow each other (fewer items than threads), or with
  // `split_every_head` one part of every head (parts outer).
  auto item_of = [&](index_t u) { return split_every_head ? u % items : u / parts; };
  auto unit_at = [&](index_t u) {
    const index_t item = item_of(u);
    const int part = static_cast<int>(split_every_head ? u / items : u % parts);
    return unit{item / p.heads, item % p.heads, part * rows_per_part, std::min(p.n, (part + 1) * rows_per_part)};
  };
  // A record holds the state before tokens 0, every, 2·every, ...: copied before the token,
  // or written by the sweep of the token before it (told a token ahead; the unit puts the
  // first where it goes itself).
  auto slot = [&](index_t u, index_t t) { return p.state_target(item_of(u) / p.heads, t, item_of(u) % p.heads); };
  auto token = [&](Unit& k, index_t u, index_t t) {
    if constexpr (can_record_in_sweep<Unit>) {
      if (k.records_in_sweep()) {
        if ((t + 1) % p.every == 0 && t + 1 < p.tokens) k.store_after_token(slot(u, t + 1));
        return k.token(t);
      }
    }
    if (p.every > 0 && t % p.every == 0) k.store(slot(u, t));
    k.token(t);
  };
  auto run_thread = [&](int tid) {
    const index_t first = units * tid / threads, last = units * (tid + 1) / threads;
    if (last - first == 1 || p.tokens == 1) {
      for (index_t u = first; u < last; ++u) {
        const unit at = unit_at(u);
        Unit k(p, at, thread_arena<A>(unit_scratch_size<Unit>(p, at, 0)));
        for (index_t t = 0; t < p.tokens; ++t) token(k, u, t);
        k.finish();
      }
    } else {
      std::size_t total = 0;
      for (index_t u = first; u < last; ++u) total += unit_scratch_size<Unit>(p, unit_at(u), 0);
      A* scratch = thread_arena<A>(total);
      thread_units<Unit> mine(static_cast<std::size_t>(last - first));
      for (index_t u = first; u < last; ++u) {
        const unit at = unit_at(u);
        mine.add(p, at, scratch);
        scratch += unit_scratch_size<Unit>(p, at, 0);
      }
      for (index_t t0 = 0; t0 < p.tokens; t0 += block)
        for (index_t u = first; u < last; ++u)
          for (index_t t = t0; t < std::min(t0 + block, p.tokens); ++t)
            token(mine[static_cast<std::size_t>(u - first)], u, t);
      for (index_t u = first; u < last; ++u) mine[static_cast<std::size_t>(u - first)].finish();
    }
  };
  run_threads(threads, run_thread);
}

}  // namespace metastate::wkv7::detail
