// Non-owning views over contiguous row-major [B,T,H,N] sequences and [B,H,N,N] states.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>

namespace metastate {

using index_t = std::ptrdiff_t;

/// A contiguous row-major `[B, T, H, N]` tensor (channel `h*N + n`), not owned.
template <class T>
class sequence_view {
 public:
  sequence_view() = default;
  sequence_view(T* data, index_t batch, index_t tokens, index_t heads, index_t head_size)
      : data_(data), shape_{batch, tokens, heads, head_size} {}
  /// A const view of the same memory.
  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator sequence_view<const U>() const {
    return {data_, shape_[0], shape_[1], shape_[2], shape_[3]};
  }

  T* data() const { return data_; }
  index_t batch() const { return shape_[0]; }
  index_t tokens() const { return shape_[1]; }
  index_t heads() const { return shape_[2]; }
  index_t head_size() const { return shape_[3]; }
  const std::array<index_t, 4>& shape() const { return shape_; }
  index_t size() const { return shape_[0] * shape_[1] * shape_[2] * shape_[3]; }
  /// The N values of head `h` of token `t` in batch row `b`.
  T* at(index_t b, index_t t, index_t h) const {
    return data_ + ((b * shape_[1] + t) * shape_[2] + h) * shape_[3];
  }

 private:
  T* data_ = nullptr;
  std::array<index_t, 4> shape_{0, 0, 0, 0};
};

/// A contiguous row-major `[B, H, N, N]` batch of states (row = value index), not owned.
template <class T>
class state_view {
 public:
  state_view() = default;
  state_view(T* data, index_t batch, index_t heads, index_t head_size)
      : data_(data), shape_{batch, heads, head_size, head_size} {}
  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator state_view<const U>() const {
    return {data_, shape_[0], shape_[1], shape_[2]};
  }

  T* data() const { return data_; }
  index_t batch() const { return shape_[0]; }
  index_t heads() const { return shape_[1]; }
  index_t head_size() const { return shape_[2]; }
  const std::array<index_t, 4>& shape() const { return shape_; }
  index_t size() const { return shape_[0] * shape_[1] * shape_[2] * shape_[3]; }
  /// The N x N state of head `h` in batch row `b`.
  T* at(index_t b, index_t h) const { return data_ + (b * shape_[1] + h) * shape_[2] * shape_[3]; }

 private:
  T* data_ = nullptr;
  std::array<index_t, 4> shape_{0, 0, 0, 0};
};

}  // namespace metastate
