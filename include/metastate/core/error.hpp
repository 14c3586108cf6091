// metastate error types: every run-time error is a sentence naming what is wrong.
#pragma once

#include <cstddef>
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

}  // namespace metastate
