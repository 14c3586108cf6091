// The WKV-7 recurrence (SPEC §2): `step` and `sequence` over [B,T,H,N] inputs and [B,H,N,N] states.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "metastate/core/aligned.hpp"
#include "metastate/core/backend.hpp"
#include "metastate/core/config.hpp"
#include "metastate/core/error.hpp"
#include "metastate/core/head_size.hpp"
#include "metastate/core/parallel.hpp"
#include "metastate/core/scalar_traits.hpp"
#include "metastate/core/views.hpp"
#include "metastate/wkv/detail/driver.hpp"
#include "metastate/wkv/detail/eigen_kernel.hpp"
#include "metastate/wkv/detail/scalar_kernel.hpp"
#include "metastate/wkv/detail/simd_kernel.hpp"

/// The WKV-7 op. Per (batch, head), with `S` the N x N state (row = value index):
///   u_t = S_{t-1} a_t;  S_t = S_{t-1} diag(w_t) + u_t b_tᵀ + v_t k_tᵀ;  y_t = S_t r_t.
///
/// Aliasing: the state is the destination and is updated in place; `y` and the state must
/// not overlap the inputs or each other (checked: overlap_error).
/// Inputs are read-only and may share memory.
namespace metastate::wkv7 {

/// Options of a call: threads, and how the decay is given.
struct options {
  exec_policy exec{};
  decay_input decay = decay_input::w;
};

/// How many states a `record` receives from a call of `tokens` tokens.
inline index_t recorded_states(index_t tokens, index_t every) {
  return every > 0 && tokens > 0 ? (tokens + every - 1) / every : 0;
}

namespace detail {
struct record_access;

/// A fingerprint of the inputs a record depends on (w, k, v, a, b; not r): the bytes of their
/// rows at (batch 0, token 0, head 0) and at the last batch row, token and head, mixed 64
/// bits at a time in four independent streams (a few hundred cycles at N = 64, where hashing
/// byte by byte would take a few % of a one-head 128-token call). A change to those rows
/// changes it but for chance (2⁻⁶⁴); another chunk of a sequence has other first rows.
template <class T>
std::uint64_t inputs_signature(const inputs<T>& in) {
  const auto& shape = in.r.shape();
  if (shape[0] <= 0 || shape[1] <= 0 || shape[2] <= 0 || shape[3] <= 0) return 0;
  constexpr std::uint64_t prime = 1099511628211ull;
  std::uint64_t lanes[4] = {14695981039346656037ull, 1, 2, 3};
  const std::size_t bytes = static_cast<std::size_t>(shape[3]) * sizeof(T);
  auto mix = [&](const T* row) {
    const auto* from = reinterpret_cast<const unsigned char*>(row);
    std::size_t i = 0;
    for (; i + 32 <= bytes; i += 32)
      for (int k = 0; k < 4; ++k) {
        std::uint64_t word;
        std::memcpy(&word, from + i + 8 * k, 8);
        lanes[k] = (lanes[k] ^ word) * prime;
      }
    for (int k = 0; i < bytes; i += 8, ++k) {
      std::uint64_t word = 0;
      std::memcpy(&word, from + i, std::min<std::size_t>(8, bytes - i));
      lanes[k] = (lanes[k] ^ word) * prime;
    }
  };
  for (const auto* view : {&in.w, &in.k, &in.v, &in.a, &in.b}) {
    mix(view->at(0, 0, 0));
    mix(view->at(shape[0] - 1, shape[1] - 1, shape[2] - 1));
  }
  return lanes[0] ^ (lanes[1] * 3) ^ (lanes[2] * 5) ^ (lanes[3] * 7);
}
}  // namespace detail

/// What a `sequence` call leaves behind for the Meta-State encoder
/// (`meta_state::encode_recorded`, `meta_state::evolve_recorded`), which then never replays
/// the recurrence:
/// - `states()`: the state before tokens 0, every, 2·every, … (at the start of each block of
///   `every` tokens), `recorded_states(T, every)` = ⌈T / every⌉ blocks [B,H,N,N] one after
///   another, each N x N state TRANSPOSED (S(i, j) at j·N + i: the layout the sequence
///   kernel holds it in, so recording is a plain copy);
/// - `removal()`: u_t = S_{t−1} a_t of every token, [B,T,H,N].
/// The record owns that storage, sized by the call that fills it (it only grows, so a model
/// filling one record per chunk allocates at the first chunk only), and remembers that call's
/// shape and decay input and a fingerprint of its inputs: the encoder rejects (shape_error)
/// a record filled by no call or by a call of another shape or decay input, and
/// (value_error) one filled on other inputs. `every` = 0 records nothing. Not offered by the
/// cuda backend.
template <class S>
class record {
 public:
  explicit record(index_t every = 0) : every_(every) {
    if (every < 0)
      throw shape_error("wkv7::record: every must be >= 0 (0 records nothing), got " + std::to_string(every));
  }
  index_t every() const { return every_; }
  /// Whether a `sequence` call has filled the record, and that call's [B,T,H,N] and decay input.
  bool filled() const { return shape_[3] > 0; }  // (a call's head size is positive)
  const std::array<index_t, 4>& shape() const { return shape_; }
  decay_input decay() const { return decay_; }
  const S* states() const { return states_.data(); }
  const S* removal() const { return removal_.data(); }
  /// The fingerprint of the filling call's inputs (`detail::inputs_signature`).
  std::uint64_t inputs_signature() const { return signature_; }

 private:
  friend struct detail::record_access;
  index_t every_;
  std::array<index_t, 4> shape_{};
  decay_input decay_ = decay_input::w;
  std::uint64_t signature_ = 0;
  aligned_vector<S> states_, removal_;
};

namespace detail {
/// What `sequence` does to a record: sizes its storage for a call and stamps the call on it.
struct record_access {
  template <class S>
  static void prepare(record<S>& saved, const std::array<index_t, 4>& shape, decay_input decay,
                      std::uint64_t signature) {
    const index_t B = shape[0], T = shape[1], H = shape[2], N = shape[3];
    if (saved.every_ > 0) {
      const auto states = static_cast<std::size_t>(recorded_states(T, saved.every_) * B * H * N * N),
                 removal = static_cast<std::size_t>(B * T * H * N);
      if (saved.states_.size() < states) saved.states_.resize(states);
      if (saved.removal_.size() < removal) saved.removal_.resize(removal);
    }
    saved.shape_ = shape;
    saved.decay_ = decay;
    saved.signature_ = signature;
  }
  template <class S>
  static S* states(record<S>& saved) {
    return saved.every_ > 0 ? saved.states_.data() : nullptr;
  }
  template <class S>
  static S* removal(record<S>& saved) {
    return saved.every_ > 0 ? saved.removal_.data() : nullptr;
  }
};

/// Throws value_error "<context>: tensor '<name>' has a non-finite value at flat index i".
template <class T>
void expect_finite(const char* context, const char* name, const T* data, index_t size) {
  for (index_t i = 0; i < size; ++i)
    if (!std::isfinite(static_cast<double>(data[i])))
      throw value_error(std::string(context) + ": tensor '" + name + "' has a non-finite value at flat index " +
                        std::to_string(i));
}

/// Throws value_error unless every decay lies in (0, 1] (a log-decay in (-inf, 0]).
template <class T>
void expect_decays(const char* context, sequence_view<const T> w, decay_input decay) {
  for (index_t i = 0; i < w.size(); ++i) {
    const double x = static_cast<double>(w.data()[i]);
    if (decay == decay_input::w ? !(x > 0 && x <= 1) : !(x <= 0))
      throw value_error(std::string(context) + ": decay '" + (decay == decay_input::w ? "w" : "log w") + "' = " +
                        std::to_string(x) + " at flat index " + std::to_string(i) + " is outside " +
                        (decay == decay_input::w ? "(0, 1]" : "(-inf, 0]"));
  }
}

}  // namespace detail

/// Throws value_error if a decay lies outside (0, 1] (or a log-decay is positive), or any
/// input is not finite. Kernels do not check values in release builds; this is the
/// validating API (it runs automatically, with the state, when METASTATE_VALIDATE_VALUES is 1).
template <class T>
void validate_values(const inputs<T>& in, decay_input decay = decay_input::w) {
  const std::pair<const char*, const sequence_view<const T>*> named[] = {
      {"r", &in.r}, {"w", &in.w}, {"k", &in.k}, {"v", &in.v}, {"a", &in.a}, {"b", &in.b}};
  for (const auto& [name, view] : named) detail::expect_finite("wkv7", name, view->data(), view->size());
  detail::expect_decays("wkv7", in.w, decay);
}

/// As above, and the initial state S_0 must be finite too.
template <class T, class S>
void validate_values(const inputs<T>& in, state_view<const S> state, decay_input decay = decay_input::w) {
  detail::expect_finite("wkv7", "state", state.data(), state.size());
  validate_values(in, decay);
}

namespace detail {

template <int N, class T, class A>
void run(backend::scalar, const problem<T, A>& p, const exec_policy& e) {
  run_units<scalar_unit<T, A, N>>(p, e, 1);
}

template <int N, class T, class A>
void run(backend::eigen, const problem<T, A>& p, const exec_policy& e) {
  run_units<eigen_unit<T, A, N>>(p, e, eigen_unit<T, A, N>::block_rows);
}

template <int N, class Arch, class T, class A>
void run(backend::simd<Arch>, const problem<T, A>& p, const exec_policy& e) {
  constexpr int L = simd_lanes<Arch>;
  using narrow = backend::simd<backend::narrow_simd_arch>;
  constexpr bool has_narrower = simd_lanes<backend::narrow_simd_arch> < L;
  if constexpr (!std::is_same_v<A, float>) {
    run<N>(backend::eigen{}, p, e);  // no vector kernel for this type
  } else if constexpr (N != dynamic && N % L != 0) {
    if constexpr (has_narrower) run<N>(narrow{}, p, e);
    else run<N>(backend::eigen{}, p, e);
  } else {
    if (p.n % L != 0) {
      if constexpr (has_narrower) run<N>(narrow{}, p, e);
      else run<N>(backend::eigen{}, p, e);
    } else if (p.tokens >= transposed_min_tokens) {
      run_units<simd_transposed_unit<Arch, T, N>>(p, e, L);
    } else {
      run_units<simd_row_unit<Arch, T, N>>(p, e, L);
    }
  }
}

template <int N, class Backend, class T, class S>
void checked_run(const char* context, const inputs<T>& in, state_view<S> state, sequence_view<T> y,
                 const options& opt, bool single_token, record<S>* saved = nullptr) {
  static_assert(!std::is_same_v<Backend, backend::cuda> || METASTATE_CUDA_COMPILER,
                "THE_CUDA_BACKEND_NEEDS_NVCC_AND_THE_METASTATE_CUDA_HEADERS");
  static_assert(std::is_base_of_v<backend::scalar, Backend> || std::is_same_v<Backend, backend::cuda>,
                "UNKNOWN_BACKEND__USE_A_TAG_FROM_METASTATE_BACKEND");
  static_assert(std::is_same_v<S, accum_t<T>>,
                "THE_STATE_MUST_HAVE_THE_ACCUMULATE_TYPE_OF_THE_STORAGE_TYPE__FLOAT_FOR_HALF_AND_BFLOAT16");
  static_assert(!std::is_const_v<T>, "OUTPUT_Y_MUST_BE_WRITABLE");
  const auto& shape = in.r.shape();
  const index_t n = N == dynamic ? shape[3] : N;
  const std::array<index_t, 4> expected{shape[0], single_token ? 1 : shape[1], shape[2], n};
  const std::array<index_t, 4> expected_state{shape[0], shape[2], n, n};
  const std::pair<const char*, const sequence_view<const T>*> named[] = {
      {"r", &in.r}, {"w", &in.w}, {"k", &in.k}, {"v", &in.v}, {"a", &in.a}, {"b", &in.b}};
  // Everything at once first; the tensors are named only when something is wrong (naming
  // each costs a few % of a one-head step).
  // (std::array's == is a call to memcmp per shape.)
  auto same = [](const std::array<index_t, 4>& x, const std::array<index_t, 4>& e) {
    return (x[0] == e[0]) & (x[1] == e[1]) & (x[2] == e[2]) & (x[3] == e[3]);
  };
  bool fine = same(y.shape(), expected) && same(state.shape(), expected_state) && (y.size() == 0 || y.data()) &&
              (state.size() == 0 || state.data());
  for (const auto& entry : named)
    fine = fine && same(entry.second->shape(), expected) && (entry.second->size() == 0 || entry.second->data());
  fine = fine && (shape[0] >= 0) & (shape[1] >= 0) & (shape[2] >= 0);
  if (!fine) {
    expect_extents(context, "r", shape);
    for (const auto& [name, view] : named) {
      expect_shape(context, name, view->shape(), expected);
      if (view->size() > 0 && view->data() == nullptr)
        throw shape_error(std::string(context) + ": tensor '" + name + "' has no data");
    }
    expect_shape(context, "y", y.shape(), expected);
    expect_shape(context, "state", state.shape(), expected_state);
    throw shape_error(std::string(context) + ": 'y' or 'state' has no data");
  }
  if (n <= 0) throw shape_error(std::string(context) + ": head size must be positive, got " + std::to_string(n));
  // (Small calls never ask resolve_threads, which checks this too.)
  if (opt.exec.threads < 0) throw_negative_threads(context, opt.exec.threads);
  // Outputs need memory of their own: written over an input or the state, each backend and
  // thread count computed something else, all of it wrong. Inputs may share memory. A
  // one-head step takes about 300 ns, so y and the state are first compared with the inputs
  // (all of y's size, as just checked) in a few integer operations; the named check runs only
  // when that finds something. (A record's storage is its own.)
  const auto address = [](const void* data) { return reinterpret_cast<std::uintptr_t>(data); };
  const std::uintptr_t L = static_cast<std::uintptr_t>(y.size()) * sizeof(T), y0 = address(y.data()),
                       s0 = address(state.data()), s1 = s0 + static_cast<std::uintptr_t>(state.size()) * sizeof(S);
  const std::uintptr_t read[] = {address(in.r.data()), address(in.w.data()), address(in.k.data()),
                                 address(in.v.data()), address(in.a.data()), address(in.b.data())};
  bool apart = (y0 + L <= s0) | (s1 <= y0);
  for (const std::uintptr_t x : read) apart &= (y0 - x + (L - 1) >= 2 * L - 1) & ((s1 <= x) | (x + L <= s0));
  if (!apart)
    expect_disjoint(context, std::array{bytes_of("y", y), bytes_of("state", state)},
                    std::array{bytes_of("r", in.r), bytes_of("w", in.w), bytes_of("k", in.k), bytes_of("v", in.v),
                               bytes_of("a", in.a), bytes_of("b", in.b)});
  const index_t every = saved ? saved->every() : 0;
  if (std::is_same_v<Backend, backend::cuda> && every != 0)
    throw shape_error(std::string(context) + ": the cuda backend does not record (record.every must be 0)");
  // Device memory cannot be read here: the cuda backend leaves values unchecked.
  if constexpr (METASTATE_VALIDATE_VALUES && !std::is_same_v<Backend, backend::cuda>)
    validate_values(in, state_view<const S>(state), opt.decay);
  // (A record of nothing, every = 0, is refused by the encoder anyway; and only such a record
  // passes with the cuda backend, whose inputs the host cannot read.)
  if (saved) record_access::prepare(*saved, expected, opt.decay, every > 0 ? inputs_signature(in) : 0);
  const problem<T, S> p{in, state, y, opt.decay, shape[0], expected[1], shape[2], static_cast<int>(n),
                        saved ? record_access::states(*saved) : nullptr,
                        saved ? record_access::removal(*saved) : nullptr, every};
  run<N>(Backend{}, p, opt.exec);
}

}  // namespace detail

/// Runs T tokens: `state` holds S_0 on entry and S_T on return; `y` receives every y_t.
/// `N` is the head size (or `dynamic`); `Backend` a tag from metastate::backend.
/// Throws shape_error naming the tensor when a shape does not match `r`'s `[B,T,H,N]`.
/// The `simd` kernel keeps its working copy of the states in a per-thread buffer that is
/// reused by later calls (so calling once per chunk allocates nothing after the first call).
template <int N = dynamic, class Backend = backend::default_backend, class T, class S>
void sequence(const inputs<T>& in, state_view<S> state, sequence_view<T> y, const options& opt = {}) {
  detail::checked_run<N, Backend>("wkv7::sequence", in, state, y, opt, false);
}

/// `sequence` that also fills `saved` with what the Meta-State encoder needs (see `record`).
template <int N = dynamic, class Backend = backend::default_backend, class T, class S>
void sequence(const inputs<T>& in, state_view<S> state, sequence_view<T> y, const options& opt, record<S>& saved) {
  detail::checked_run<N, Backend>("wkv7::sequence", in, state, y, opt, false, &saved);
}

/// One token for every batch row and head (inputs and `y` are `[B,1,H,N]`), the state
/// updated in place. Allocates nothing on the heap for a static head size.
template <int N = dynamic, class Backend = backend::default_backend, class T, class S>
void step(const inputs<T>& in, state_view<S> state, sequence_view<T> y, const options& opt = {}) {
  detail::checked_run<N, Backend>("wkv7::step", in, state, y, opt, true);
}

}  // namespace metastate::wkv7
