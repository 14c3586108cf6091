// The WKV-7 op on CUDA: `wkv7::sequence` / `wkv7::step` with `backend::cuda` run this kernel.
#pragma once

#include "metastate/cuda/runtime.cuh"
#include "metastate/wkv/wkv7.hpp"

namespace metastate::cuda::detail {

/// One launch of the recurrence kernel. Every tensor is [B,T,H,stride] (token-major), the
/// state [B,H,n,n] in fp32; only the first n channels of each head are used, so the same
/// kernel runs the WKV-7 op (n = N), the Meta-State evolution (the first n of N channels,
/// k = v = e) and the encoder replay (query x̃[:n], state kept).
template <class D>
struct recurrence_params {
  const D *r, *w, *k, *v, *a, *b;
  D* y;
  float* state;
  int tokens, heads, n;
  int stride, kv_stride, y_stride;  // elements per head of (r, w, a, b), of (k, v), of y
  int query_n;                      // r's channels from query_n on read as 0
  int y_rows;                       // y receives rows [0, y_rows)
  bool log_decay;                   // w holds log-decays
  bool keep_state;                  // the state is read, never written back
};

/// Channel `i` of the six inputs of one token, converted to fp32 (w as a decay).
struct token_inputs {
  float r, w, k, v, a, b;
};

template <class D>
__device__ token_inputs load_token(const recurrence_params<D>& p, long long row, int i) {
  const long long o = row * p.stride + i, kv = row * p.kv_stride + i;
  const float w = to_float(p.w[o]);
  return {i < p.query_n ? to_float(p.r[o]) : 0.f,
          p.log_decay ? expf(w) : w,
          to_float(p.k[kv]),
          to_float(p.v[kv]),
          to_float(p.a[o]),
          to_float(p.b[o])};
}

/// Σ_j s[j] x[j] over a shared-memory vector, read four floats at a time (broadcast to the
/// warp), in four partial sums: one chain of N dependent FMAs would make each token wait
/// N FMA latencies, which is what limits a launch with few (batch, head) blocks.
template <int N>
__device__ __forceinline__ float dot(const float (&s)[N], const float* x) {
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int j = 0; j < N; j += 4) {
    const float4 x4 = *reinterpret_cast<const float4*>(x + j);
    acc[0] = fmaf(s[j], x4.x, acc[0]);
    acc[1] = fmaf(s[j + 1], x4.y, acc[1]);
    acc[2] = fmaf(s[j + 2], x4.z, acc[2]);
    acc[3] = fmaf(s[j + 3], x4.w, acc[3]);
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/// s = s diag(w) + u bᵀ + v kᵀ for one state row, returning (the new row)·q (four partial sums).
template <int N>
__device__ __forceinline__ float update_row(float (&s)[N], const float* w, const float* b, const float* k,
                                            const float* q, float u, float v) {
  float y[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int j = 0; j < N; j += 4) {
    const float4 w4 = *reinterpret_cast<const float4*>(w + j), b4 = *reinterpret_cast<const float4*>(b + j),
                 k4 = *reinterpret_cast<const float4*>(k + j), q4 = *reinterpret_cast<const float4*>(q + j);
    const float wj[4] = {w4.x, w4.y, w4.z, w4.w}, bj[4] = {b4.x, b4.y, b4.z, b4.w},
                kj[4] = {k4.x, k4.y, k4.z, k4.w}, qj[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      s[j + c] = fmaf(s[j + c], wj[c], fmaf(u, bj[c], v * kj[c]));
      y[c] = fmaf(s[j + c], qj[c], y[c]);
    }
  }
  return (y[0] + y[1]) + (y[2] + y[3]);
}

/// One block per (batch, head), thread i owns state row i in registers; per token the
/// inputs go through shared memory, and the next token's loads are issued before this
/// token's arithmetic so that their latency is hidden.
template <int N, class D>
__global__ void __launch_bounds__(N) recurrence_kernel(const recurrence_params<D> p) {
  __shared__ __align__(16) float r_[N], w_[N], k_[N], a_[N], b_[N];
  const int i = threadIdx.x, n = p.n, head = blockIdx.x % p.heads;
  const long long batch = blockIdx.x / p.heads;
  const bool live = i < n;
  float* row_state = p.state + (static_cast<long long>(blockIdx.x) * n + (live ? i : 0)) * n;
  float s[N];
#pragma unroll
  for (int j = 0; j < N; ++j) s[j] = live && j < n ? row_state[j] : 0.f;

  const long long first_row = batch * p.tokens * p.heads + head;  // (b, t, h) -> first_row + t * heads
  token_inputs next{};
  if (live && p.tokens > 0) next = load_token(p, first_row, i);
  for (int t = 0; t < p.tokens; ++t) {
    const token_inputs in = next;
    r_[i] = in.r;  // threads past n store the zeros they hold
    w_[i] = in.w;
    k_[i] = in.k;
    a_[i] = in.a;
    b_[i] = in.b;
    __syncthreads();
    if (live && t + 1 < p.tokens) next = load_token(p, first_row + (t + 1) * p.heads, i);
    const float u = dot(s, a_);
    const float y = update_row(s, w_, b_, k_, r_, u, in.v);
    if (i < p.y_rows) p.y[(first_row + t * p.heads) * p.y_stride + i] = from_float<D>(y);
    __syncthreads();  // the next token overwrites the shared inputs
  }
  if (live && !p.keep_state) {
#pragma unroll
    for (int j = 0; j < N; ++j)
      if (j < n) row_state[j] = s[j];
  }
}

template <int N>
constexpr bool supported_head_size = N >= 16 && N <= 128 && N % 8 == 0;

/// Calls `f(std::integral_constant<int, K>{})` with K the static head size, or for a
/// dynamic one the smallest multiple of 16 that holds n (the kernels mask channels past n).
template <int N, class F>
void with_head_size(const char* context, int n, F&& f) {
  static_assert(N == dynamic || supported_head_size<N>, "THE_CUDA_BACKEND_HANDLES_HEAD_SIZES_16_TO_128_IN_STEPS_OF_8");
  if (n < 1 || n > 128)
    throw shape_error(std::string(context) + ": head size " + std::to_string(n) +
                      " is outside the cuda backend's range [1, 128]");
  if constexpr (N != dynamic) {
    if (n > N)  // N threads per head would leave rows N.. undone
      throw shape_error(std::string(context) + ": head size " + std::to_string(n) + " exceeds the template head size " +
                        std::to_string(N));
    f(std::integral_constant<int, N>{});
  } else {
    switch ((n + 15) / 16) {
      case 1: return f(std::integral_constant<int, 16>{});
      case 2: return f(std::integral_constant<int, 32>{});
      case 3: return f(std::integral_constant<int, 48>{});
      case 4: return f(std::integral_constant<int, 64>{});
      case 5: return f(std::integral_constant<int, 80>{});
      case 6: return f(std::integral_constant<int, 96>{});
      case 7: return f(std::integral_constant<int, 112>{});
      default: return f(std::integral_constant<int, 128>{});
    }
  }
}

template <int N, class D>
void launch_recurrence(const char* context, const recurrence_params<D>& params, long long blocks,
                       cudaStream_t stream) {
  if (blocks == 0 || params.tokens == 0) return;
  with_head_size<N>(context, params.n, [&](auto size) {
    constexpr int K = decltype(size)::value;
    check_before_launch(context);
    recurrence_kernel<K, D><<<static_cast<unsigned>(blocks), K, 0, stream>>>(params);
    check_launch(context);
  });
}

}  // namespace metastate::cuda::detail

namespace metastate::wkv7::detail {

/// `backend::cuda`: every pointer of `p` is device memory; launches on `exec.stream`,
/// asynchronously (launch errors are thrown, errors during the run surface at the next
/// synchronising CUDA call).
template <int N, class T, class A>
void run(backend::cuda, const problem<T, A>& p, const exec_policy& exec) {
  namespace cd = metastate::cuda::detail;
  static_assert(std::is_same_v<A, float>, "THE_CUDA_BACKEND_KEEPS_STATES_IN_FLOAT");
  using D = cd::device_t<T>;
  const int n = p.n;
  const cd::recurrence_params<D> params{
      cd::device_ptr(p.in.r.data()), cd::device_ptr(p.in.w.data()), cd::device_ptr(p.in.k.data()),
      cd::device_ptr(p.in.v.data()), cd::device_ptr(p.in.a.data()), cd::device_ptr(p.in.b.data()),
      cd::device_ptr(p.y.data()),    p.state.data(),
      static_cast<int>(p.tokens),    static_cast<int>(p.heads),
      n,                             n,
      n,                             n,
      n,                             n,
      p.decay == decay_input::log_w, false};
  cd::launch_recurrence<N>("wkv7 (cuda)", params, p.batch * p.heads, metastate::cuda::stream_of(exec));
}

}  // namespace metastate::wkv7::detail
