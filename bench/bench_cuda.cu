// GPU benchmarks, timed with CUDA events: the device's measured FMA rate, and the WKV-7 and
// fused Meta-State sequence kernels as tokens/s and as a fraction of that rate.
#include <benchmark/benchmark.h>

#include <metastate/cuda/meta_state.cuh>

#include <algorithm>
#include <cstdint>
#include <string>

namespace ms = metastate;
namespace mc = metastate::cuda;

namespace {

constexpr int fma_chains = 8;  // independent chains per thread: enough to cover the FMA latency

__global__ void fma_kernel(float* out, int iterations) {
  float acc[fma_chains];
#pragma unroll
  for (int c = 0; c < fma_chains; ++c) acc[c] = 1.0f + 1e-3f * (threadIdx.x + c);
  for (int i = 0; i < iterations; ++i)
#pragma unroll
    for (int c = 0; c < fma_chains; ++c) acc[c] = fmaf(acc[c], 0.999999f, 1e-7f);
  float sum = 0;
#pragma unroll
  for (int c = 0; c < fma_chains; ++c) sum += acc[c];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

/// Seconds of one launch made by `launch`, between two events on the default stream.
template <class F>
double timed(F&& launch) {
  cudaEvent_t start, stop;
  mc::check(cudaEventCreate(&start), "cudaEventCreate");
  mc::check(cudaEventCreate(&stop), "cudaEventCreate");
  mc::check(cudaEventRecord(start), "cudaEventRecord");
  launch();
  mc::check(cudaEventRecord(stop), "cudaEventRecord");
  mc::check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms_elapsed = 0;
  mc::check(cudaEventElapsedTime(&ms_elapsed, start, stop), "cudaEventElapsedTime");
  mc::check(cudaEventDestroy(start), "cudaEventDestroy");
  mc::check(cudaEventDestroy(stop), "cudaEventDestroy");
  return ms_elapsed * 1e-3;
}

struct fma_launch {
  int blocks, threads = 256, iterations = 4096;
  double flop() const { return 2.0 * blocks * threads * fma_chains * double(iterations); }
};

fma_launch fma_shape() {
  cudaDeviceProp prop{};
  mc::check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  return {prop.multiProcessorCount * 8};
}

/// The device's fp32 FMA rate in GFLOP/s: the best of 5 launches (measured once per process).
double device_fma_gflops() {
  static const double peak = [] {
    const fma_launch shape = fma_shape();
    mc::device_buffer<float> out(std::size_t(shape.blocks) * shape.threads);
    double best = 0;
    for (int repeat = 0; repeat < 6; ++repeat) {  // the first warms the clocks up
      const double s = timed([&] {
        fma_kernel<<<shape.blocks, shape.threads>>>(out.data(), shape.iterations);
        mc::check_launch("fma_kernel");
      });
      if (repeat > 0) best = std::max(best, shape.flop() / s / 1e9);
    }
    return best;
  }();
  return peak;
}

void calibration_fma(benchmark::State& state) {
  const fma_launch shape = fma_shape();
  mc::device_buffer<float> out(std::size_t(shape.blocks) * shape.threads);
  for (auto _ : state)
    state.SetIterationTime(timed([&] {
      fma_kernel<<<shape.blocks, shape.threads>>>(out.data(), shape.iterations);
      mc::check_launch("fma_kernel");
    }));
  state.counters["gflops"] = benchmark::Counter(shape.flop() / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["best_of_5_gflops"] = device_fma_gflops();
}

/// Fills a device buffer with uniform values in [lo, hi) from a hash of the index (no zeros).
template <class D>
__global__ void fill_kernel(D* x, std::size_t size, float lo, float hi, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < size;
       i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float u = (h & 0xffffff) / float(1 << 24);
    x[i] = mc::detail::from_float<D>(lo + (hi - lo) * u);
  }
}

template <class T>
mc::device_buffer<T> random_buffer(std::size_t size, float lo, float hi, std::uint32_t seed) {
  mc::device_buffer<T> x(size);
  fill_kernel<<<1024, 256>>>(mc::detail::device_ptr(x.data()), size, lo, hi, seed);
  mc::check_launch("fill_kernel");
  return x;
}

/// Inputs with RWKV-7's magnitudes: decay in (0.6, 1), a = -κ-like, b = a scaled down and negated.
template <class T>
struct device_workload {
  int B, T_, H, N;
  mc::device_buffer<T> r, w, k, v, a, b, x, y;
  mc::device_buffer<float> state, start, m;
  device_workload(int batch, int tokens, int heads, int n)
      : B(batch), T_(tokens), H(heads), N(n),
        r(random_buffer<T>(size(), -1, 1, 1)), w(random_buffer<T>(size(), 0.6f, 1, 2)),
        k(random_buffer<T>(size(), -0.15f, 0.15f, 3)), v(random_buffer<T>(size(), -1, 1, 4)),
        a(random_buffer<T>(size(), -0.15f, 0.15f, 5)), b(random_buffer<T>(size(), -0.1f, 0.1f, 6)),
        x(random_buffer<T>(size(), -1, 1, 7)), y(size()),
        state(random_buffer<float>(std::size_t(B) * H * N * N, -0.5f, 0.5f, 8)),
        start(random_buffer<float>(std::size_t(B) * H * N * N, -0.5f, 0.5f, 9)),
        m(random_buffer<float>(std::size_t(B) * H * N * N, -0.5f, 0.5f, 10)) {}
  std::size_t size() const { return std::size_t(B) * T_ * H * N; }
  ms::sequence_view<const T> view(const mc::device_buffer<T>& t) const { return {t.data(), B, T_, H, N}; }
  ms::wkv7::inputs<T> inputs() const { return {view(r), view(w), view(k), view(v), view(a), view(b)}; }
};

void set_counters(benchmark::State& st, double tokens, double flop) {
  using benchmark::Counter;
  st.counters["tokens_per_second"] = Counter(tokens, Counter::kIsIterationInvariantRate);
  st.counters["gflops"] = Counter(flop / 1e9, Counter::kIsIterationInvariantRate);
  st.counters["fma_rate_fraction"] = Counter(flop / 1e9 / device_fma_gflops(), Counter::kIsIterationInvariantRate);
}

template <int N, class T>
void wkv7_sequence(benchmark::State& st, int B, int H, int T_) {
  device_workload<T> x(B, T_, H, N);
  for (auto _ : st)
    st.SetIterationTime(timed([&] {
      ms::wkv7::sequence<N, ms::backend::cuda>(x.inputs(), ms::state_view<float>(x.state.data(), B, H, N),
                                               ms::sequence_view<T>(x.y.data(), B, T_, H, N));
    }));
  set_counters(st, double(B) * T_, 8.0 * N * N * B * H * double(T_));
}

template <int N, class T>
void meta_state_sequence(benchmark::State& st, int B, int H, int T_) {
  device_workload<T> x(B, T_, H, N);
  for (auto _ : st)
    st.SetIterationTime(timed([&] {
      mc::meta_state_sequence<N>(x.inputs(), ms::state_view<const float>(x.start.data(), B, H, N), x.view(x.x),
                                 ms::state_view<float>(x.m.data(), B, H, N),
                                 ms::sequence_view<T>(x.y.data(), B, T_, H, N));
    }));
  // S's transition (8N²), the encoder (2N²) and M's transition with its readout (8N²).
  set_counters(st, double(B) * T_, 18.0 * N * N * B * H * double(T_));
}

template <int N, class T>
void register_shapes(const std::string& type) {
  struct shape {
    int batch, heads, tokens;
  };
  // One model's heads (B = 1, H = 12) use 12 of the device's multiprocessors; B x H = 512 fills it.
  for (const shape s : {shape{1, 12, 4096}, shape{16, 32, 1024}}) {
    const std::string tail = "/" + type + "/N:" + std::to_string(N) + "/B:" + std::to_string(s.batch) +
                             "/H:" + std::to_string(s.heads) + "/T:" + std::to_string(s.tokens);
    benchmark::RegisterBenchmark(("cuda/wkv7_sequence" + tail).c_str(), wkv7_sequence<N, T>, s.batch, s.heads,
                                 s.tokens)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("cuda/meta_state_sequence" + tail).c_str(), meta_state_sequence<N, T>, s.batch,
                                 s.heads, s.tokens)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (mc::device_count() == 0) {
    std::printf("no CUDA device found: nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  mc::check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  benchmark::AddCustomContext("cuda_device", prop.name);
  benchmark::AddCustomContext("cuda_multiprocessors", std::to_string(prop.multiProcessorCount));
  benchmark::AddCustomContext("cuda_fma_gflops_measured", std::to_string(device_fma_gflops()));
  benchmark::RegisterBenchmark("cuda/calibration/fma", calibration_fma)->UseManualTime()->Unit(benchmark::kMillisecond);
  register_shapes<64, float>("f32");
  register_shapes<64, Eigen::bfloat16>("bf16");
  register_shapes<128, float>("f32");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
