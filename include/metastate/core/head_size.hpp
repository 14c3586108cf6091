// Head size as a compile-time constant or a run-time value, through one code path.
#pragma once

namespace metastate {

/// Sentinel for a head size known only at run time (like Eigen::Dynamic).
inline constexpr int dynamic = -1;

/// Holds the head size: nothing for a static `N`, an int for `dynamic` (mdspan-style).
template <int N>
struct head_size {
  static_assert(N > 0 || N == dynamic, "HEAD_SIZE_MUST_BE_POSITIVE_OR_DYNAMIC");
  constexpr explicit head_size(int = N) {}
  static constexpr int value() { return N; }
};

template <>
struct head_size<dynamic> {
  explicit head_size(int n) : n_(n) {}
  int value() const { return n_; }

 private:
  int n_;
};

}  // namespace metastate
