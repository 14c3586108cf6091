// metastate error types: every run-time error is a sentence naming what is wrong.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "metastate/core/config.hpp"

namespace metastate {

/// A tensor whose shape does not match what the operation needs.
class shape_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A value outside the domain of an operation (e.g. a decay outside (0, 1]).
class value_error : public std::domain_error {
 public:
  using std::domain_error::domain_error;
};

/// An output that shares memory with another tensor of the same call: the ops do not work
/// in place (except on the states they update), and would silently compute wrong values.
class overlap_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A file that cannot be read or is malformed.
class io_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// "[1,17,3,64]".
template <class Range>
std::string shape_string(const Range& shape) {
  std::ostringstream out;
  out << '[';
  bool first = true;
  for (auto extent : shape) {
    out << (first ? "" : ",") << extent;
    first = false;
  }
  out << ']';
  return out.str();
}

[[noreturn]] METASTATE_COLD inline void throw_shape_mismatch(const char* context, std::string_view name,
                                                            const std::string& found, const std::string& expected) {
  throw shape_error(std::string(context) + ": tensor '" + std::string(name) + "' has shape " + found + ", expected " +
                    expected);
}

/// Throws shape_error "<context>: tensor '<name>' has shape [..], expected [..]" when they differ.
/// The comparison is inlined (a single-token step checks eight shapes); the message is built
/// only when they differ.
template <class A, class B>
inline void expect_shape(const char* context, std::string_view name, const A& found, const B& expected) {
  bool same = std::size(found) == std::size(expected);
  if (same) {
    auto e = std::begin(expected);
    for (auto f : found) same = same && static_cast<long long>(f) == static_cast<long long>(*e++);
  }
  if (!same) throw_shape_mismatch(context, name, shape_string(found), shape_string(expected));
}

/// Throws shape_error "<context>: tensor '<name>' has a negative extent [..]": views do not
/// check their extents, and negative ones can multiply to a positive size.
template <class Shape>
inline void expect_extents(const char* context, std::string_view name, const Shape& shape) {
  bool negative = false;
  for (auto extent : shape) negative |= extent < 0;
  if (negative)
    throw shape_error(std::string(context) + ": tensor '" + std::string(name) + "' has a negative extent " +
                      shape_string(shape));
}

/// The memory of one tensor of a call: its name and the bytes [begin, end) it spans.
struct tensor_bytes {
  const char* name;
  std::uintptr_t begin, end;
};

/// The bytes of `count` elements from `data`.
template <class T>
tensor_bytes bytes_of(const char* name, const T* data, std::size_t count) {
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  return {name, begin, begin + count * sizeof(T)};
}

/// The bytes a view (anything with `data()` and `size()` in elements) spans.
template <class View>
tensor_bytes bytes_of(const char* name, const View& view) {
  return bytes_of(name, view.data(), static_cast<std::size_t>(view.size()));
}

/// Whether two tensors share a byte (an empty one shares none).
inline bool overlap(const tensor_bytes& x, const tensor_bytes& y) {
  return x.begin < x.end && y.begin < y.end && x.begin < y.end && y.begin < x.end;
}

/// The named check behind `expect_disjoint`: throws for the first pair that shares a byte.
template <std::size_t W, std::size_t R>
METASTATE_COLD void name_overlap(const char* context, const std::array<tensor_bytes, W>& written,
                                 const std::array<tensor_bytes, R>& read) {
  auto fail = [context](const tensor_bytes& w, const tensor_bytes& other) {
    throw overlap_error(std::string(context) + ": tensor '" + w.name + "' overlaps '" + other.name +
                        "' in memory; the op does not work in place, so outputs need memory of their own");
  };
  for (std::size_t i = 0; i < W; ++i) {
    for (const auto& r : read)
      if (overlap(written[i], r)) fail(written[i], r);
    for (std::size_t j = i + 1; j < W; ++j)
      if (overlap(written[i], written[j])) fail(written[i], written[j]);
  }
}

/// Throws overlap_error "<context>: tensor '<w>' overlaps '<other>' in memory; ..." when a
/// tensor the call writes shares a byte with one it reads or with another one it writes.
/// Inputs may share memory with each other. Every pair is first compared without branches
/// (a one-head step takes under 300 ns): ranges that interleave are an overlap unless one
/// is empty, which only the named check tells apart.
template <std::size_t W, std::size_t R>
METASTATE_ALWAYS_INLINE void expect_disjoint(const char* context, const std::array<tensor_bytes, W>& written,
                                             const std::array<tensor_bytes, R>& read) {
  bool apart = true;
#pragma GCC unroll 8
  for (std::size_t i = 0; i < W; ++i) {
#pragma GCC unroll 16
    for (std::size_t j = 0; j < R; ++j)
      apart &= (written[i].end <= read[j].begin) | (read[j].end <= written[i].begin);
#pragma GCC unroll 8
    for (std::size_t j = i + 1; j < W; ++j)
      apart &= (written[i].end <= written[j].begin) | (written[j].end <= written[i].begin);
  }
  if (!apart) name_overlap(context, written, read);
}

}  // namespace metastate
