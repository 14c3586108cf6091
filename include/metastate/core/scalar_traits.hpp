// Storage type -> accumulate type: arithmetic and states are at least float.
#pragma once

#include <Eigen/Core>
#include <type_traits>

namespace metastate {

/// Traits of a storage scalar: `accum` is the type all arithmetic and states use.
template <class T>
struct scalar_traits {
  static_assert(sizeof(T) == 0, "UNSUPPORTED_STORAGE_TYPE__USE_FLOAT_DOUBLE_EIGEN_HALF_OR_EIGEN_BFLOAT16");
};
template <>
struct scalar_traits<float> {
  using accum = float;
};
template <>
struct scalar_traits<double> {
  using accum = double;
};
template <>
struct scalar_traits<Eigen::half> {
  using accum = float;
};
template <>
struct scalar_traits<Eigen::bfloat16> {
  using accum = float;
};

/// The accumulate type of a (possibly const) storage type.
template <class T>
using accum_t = typename scalar_traits<std::remove_const_t<T>>::accum;

}  // namespace metastate
