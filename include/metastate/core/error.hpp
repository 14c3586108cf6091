// metastate error types: every run-time error is a sentence naming what is wrong.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>

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

/// Throws shape_error "<context>: tensor '<name>' has shape [..], expected [..]" when they differ.
template <class A, class B>
void expect_shape(const char* context, const std::string& name, const A& found, const B& expected) {
  bool same = std::size(found) == std::size(expected);
  if (same) {
    auto e = std::begin(expected);
    for (auto f : found) same = same && static_cast<long long>(f) == static_cast<long long>(*e++);
  }
  if (!same)
    throw shape_error(std::string(context) + ": tensor '" + name + "' has shape " + shape_string(found) +
                      ", expected " + shape_string(expected));
}

}  // namespace metastate
