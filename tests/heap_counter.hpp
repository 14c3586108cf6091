// Heap use, counted by interposing glibc's malloc family (operator new, Eigen's aligned
// allocations and the C library all end there): include in exactly ONE translation unit of a
// program (the doctest allocation suite, the benchmark main). glibc only.
#pragma once

#include <malloc.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t size);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void* __libc_memalign(std::size_t alignment, std::size_t size);
void __libc_free(void* p);
}

namespace heap_counter {
inline std::atomic<bool> counting{false};  ///< count allocations while true
inline std::atomic<long> allocations{0};
inline std::atomic<long long> live_bytes{0}, peak_bytes{0};
/// While positive, every malloc, calloc or memalign of at least this many bytes fails (as
/// when memory runs out).
inline std::atomic<std::size_t> fail_from{0};

inline bool fails(std::size_t bytes) {
  const std::size_t from = fail_from.load();
  if (from == 0 || bytes < from) return false;
  errno = ENOMEM;
  return true;
}

/// Starts a peak measurement from the bytes live now; returns them.
inline long long restart_peak() {
  const long long now = live_bytes.load();
  peak_bytes = now;
  return now;
}

inline void* added(void* p) {
  if (!p) return p;
  if (counting) ++allocations;
  const long long now = live_bytes += static_cast<long long>(malloc_usable_size(p));
  long long peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
  return p;
}
inline void removed(void* p) {
  if (p) live_bytes -= static_cast<long long>(malloc_usable_size(p));
}
}  // namespace heap_counter

extern "C" {
void* malloc(std::size_t size) { return heap_counter::fails(size) ? nullptr : heap_counter::added(__libc_malloc(size)); }
void* calloc(std::size_t count, std::size_t size) {
  return heap_counter::fails(count * size) ? nullptr : heap_counter::added(__libc_calloc(count, size));
}
void* realloc(void* p, std::size_t size) {
  heap_counter::removed(p);
  void* q = __libc_realloc(p, size);
  return heap_counter::added(q ? q : (size > 0 ? p : nullptr));  // a failed realloc keeps p
}
void* memalign(std::size_t alignment, std::size_t size) {
  return heap_counter::fails(size) ? nullptr : heap_counter::added(__libc_memalign(alignment, size));
}
void* aligned_alloc(std::size_t alignment, std::size_t size) { return memalign(alignment, size); }
int posix_memalign(void** out, std::size_t alignment, std::size_t size) {
  void* p = memalign(alignment, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
void free(void* p) {
  heap_counter::removed(p);
  __libc_free(p);
}
}
