// Cache-line-aligned storage for tensors the vector kernels read and write.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

namespace metastate {

/// The alignment the `simd` kernels want of states and inputs. A 16-lane float vector is a
/// whole 64-byte cache line; on memory at malloc's 16-byte alignment every such load and
/// store straddles two lines (measured: a 12-head `step` 3.8 us aligned, 5.5 us not;
/// docs/PERFORMANCE.md). Misaligned tensors are accepted, only slower.
inline constexpr std::size_t cache_line_bytes = 64;

/// A std::allocator that aligns every block to `cache_line_bytes`. It over-allocates with
/// plain malloc and keeps the block's start before the aligned data, rather than calling the
/// aligned operator new: glibc's memalign leaves a slack that depends on where the block
/// lands, and the tests' exact heap accounting (memory independent of T) must not see it.
template <class T>
struct aligned_allocator {
  using value_type = T;
  aligned_allocator() noexcept = default;
  template <class U>
  aligned_allocator(const aligned_allocator<U>&) noexcept {}
  static_assert(alignof(T) <= cache_line_bytes, "aligned_allocator: the type needs more than a cache line");

  T* allocate(std::size_t n) {
    if (n > (std::numeric_limits<std::size_t>::max() - cache_line_bytes) / sizeof(T)) throw std::bad_array_new_length();
    void* block = std::malloc(n * sizeof(T) + cache_line_bytes);
    if (block == nullptr) throw std::bad_alloc();
    // The gap before the aligned data is at least malloc's alignment, room for the pointer.
    char* data = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(block) + cache_line_bytes) &
                                         ~(cache_line_bytes - 1));
    std::memcpy(data - sizeof(void*), &block, sizeof(void*));
    return reinterpret_cast<T*>(data);
  }
  void deallocate(T* p, std::size_t) noexcept {
    if (p == nullptr) return;
    void* block;
    std::memcpy(&block, reinterpret_cast<char*>(p) - sizeof(void*), sizeof(void*));
    std::free(block);
  }
  template <class U>
  bool operator==(const aligned_allocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const aligned_allocator<U>&) const noexcept {
    return false;
  }
};

/// A std::vector whose data is cache-line aligned: what the library's scratch buffers use, and
/// what callers should hold tensors in for the `simd` backend's full speed.
template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

}  // namespace metastate
