// CUDA plumbing of the metastate specialisations: errors, storage types on the device, device buffers.
#pragma once

#if !defined(__CUDACC__)
#error "metastate/cuda/*.cuh are CUDA sources: include them only from translation units compiled by nvcc"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "metastate/core/error.hpp"
#include "metastate/core/parallel.hpp"
#include "metastate/core/scalar_traits.hpp"

namespace metastate::cuda {

/// A failed CUDA runtime call or kernel launch; the message names the call and CUDA's error.
class cuda_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Throws cuda_error "<what>: <cudaErrorName> (<description>)" unless `status` is cudaSuccess.
inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw cuda_error(std::string(what) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

/// Before a launch: an error left by an earlier CUDA call (a failed allocation the caller
/// caught, a fault of an earlier kernel) is reported as such, not as this launch's.
inline void check_before_launch(const char* kernel) {
  const cudaError_t pending = cudaGetLastError();
  if (pending != cudaSuccess) check(pending, (std::string("a CUDA error pending before ") + kernel).c_str());
}

/// Checks the launch just made (bad configuration, no kernel image for this device).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

/// The stream a call launches on.
inline cudaStream_t stream_of(const exec_policy& exec) { return static_cast<cudaStream_t>(exec.stream); }

/// Number of CUDA devices; 0 (not an error) when there is no driver or no GPU.
inline int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

namespace detail {

/// The CUDA type with the same bits as a metastate storage type.
template <class T>
struct device_storage {
  static_assert(sizeof(T) == 0, "THE_CUDA_BACKEND_STORES_FLOAT_EIGEN_HALF_OR_EIGEN_BFLOAT16");
};
template <>
struct device_storage<float> {
  using type = float;
};
template <>
struct device_storage<Eigen::half> {
  using type = __half;
};
template <>
struct device_storage<Eigen::bfloat16> {
  using type = __nv_bfloat16;
};
template <class T>
using device_t = typename device_storage<std::remove_const_t<T>>::type;

template <class T>
const device_t<T>* device_ptr(const T* p) {
  static_assert(sizeof(device_t<T>) == sizeof(T), "storage types must match bit for bit");
  return reinterpret_cast<const device_t<T>*>(p);
}
template <class T>
device_t<T>* device_ptr(T* p) {
  return reinterpret_cast<device_t<T>*>(p);
}

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class D>
__device__ D from_float(float x) {
  if constexpr (std::is_same_v<D, __half>)
    return __float2half_rn(x);
  else if constexpr (std::is_same_v<D, __nv_bfloat16>)
    return __float2bfloat16_rn(x);
  else
    return x;
}

}  // namespace detail

/// An owning, typed device allocation (cudaMalloc / cudaFree), movable, not copyable.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t size) : size_(size) {
    if (size > 0) check(cudaMalloc(reinterpret_cast<void**>(&data_), size * sizeof(T)), "cudaMalloc");
  }
  explicit device_buffer(const std::vector<T>& host) : device_buffer(host.size()) { upload(host); }
  device_buffer(device_buffer&& other) noexcept : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
  }
  device_buffer& operator=(device_buffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { cudaFree(data_); }

  T* data() const { return data_; }
  std::size_t size() const { return size_; }

  /// Copies `host` (same size) to the device on `stream` (null: the default stream), after the
  /// work queued there, and waits for it. (A plain cudaMemcpy is not ordered against the work
  /// of a stream created non-blocking.)
  void upload(const std::vector<T>& host, cudaStream_t stream = nullptr) {
    if (host.size() != size_)
      throw shape_error("device_buffer::upload: " + std::to_string(host.size()) + " elements into a buffer of " +
                        std::to_string(size_));
    if (size_ == 0) return;  // (nothing to copy, and an empty buffer has no device pointer)
    check(cudaMemcpyAsync(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync (upload)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (upload)");
  }
  /// Copies the buffer to the host on `stream` (null: the default stream), after the work
  /// queued there (the kernels of a call made with that `exec.stream`).
  std::vector<T> download(cudaStream_t stream = nullptr) const {
    std::vector<T> host(size_);
    if (size_ == 0) return host;
    check(cudaMemcpyAsync(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync (download)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (download)");
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace metastate::cuda
