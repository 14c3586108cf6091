// The CUDA specialisations against the fp64 references and the CPU scalar backend; skips without a GPU.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <metastate/cuda/meta_state.cuh>

#include <cmath>
#include <cstdio>
#include <limits>

#include "../reference.hpp"
#include "../wkv_harness.hpp"

namespace ms = metastate;
namespace mc = metastate::cuda;
using harness::convert;
using harness::widen;

namespace {

/// An output buffer on the device filled with NaN, so that an element the kernel leaves unwritten fails.
template <class T>
mc::device_buffer<T> poisoned(std::size_t size) {
  return mc::device_buffer<T>(std::vector<T>(size, T(std::numeric_limits<float>::quiet_NaN())));
}

/// The problem's inputs as T on the device.
template <class T>
struct device_inputs {
  const ref::wkv_problem& p;
  mc::device_buffer<T> r, w, k, v, a, b;
  device_inputs(const ref::wkv_problem& prob, const std::vector<double>& w_input)
      : p(prob), r(convert<T>(p.r)), w(convert<T>(w_input)), k(convert<T>(p.k)), v(convert<T>(p.v)),
        a(convert<T>(p.a)), b(convert<T>(p.b)) {}
  ms::sequence_view<const T> view(const mc::device_buffer<T>& x, int tokens = -1, int t0 = 0) const {
    return {x.data() + std::size_t(t0) * p.H * p.N, p.B, tokens < 0 ? p.T : tokens, p.H, p.N};
  }
  ms::wkv7::inputs<T> all(int tokens = -1, int t0 = 0) const {
    return {view(r, tokens, t0), view(w, tokens, t0), view(k, tokens, t0),
            view(v, tokens, t0), view(a, tokens, t0), view(b, tokens, t0)};
  }
};

void synchronize() { mc::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

std::vector<double> logs(const std::vector<double>& w) {
  std::vector<double> out(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) out[i] = std::log(w[i]);
  return out;
}

/// `wkv7::sequence<N, backend::cuda>` on the device.
template <int N, class T>
harness::result gpu_sequence(const ref::wkv_problem& p, ms::wkv7::decay_input decay = ms::wkv7::decay_input::w) {
  const device_inputs<T> in(p, decay == ms::wkv7::decay_input::w ? p.w : logs(p.w));
  auto y = poisoned<T>(p.seq_size());
  mc::device_buffer<float> state(convert<float>(p.s0));
  ms::wkv7::options opt;
  opt.decay = decay;
  ms::wkv7::sequence<N, ms::backend::cuda>(in.all(), ms::state_view<float>(state.data(), p.B, p.H, p.N),
                                           ms::sequence_view<T>(y.data(), p.B, p.T, p.H, p.N), opt);
  synchronize();
  return {widen(y.download()), widen(state.download())};
}

template <int N, class T>
void check_sequence(int head_size, int B, int T_, int H, double budget) {
  CAPTURE(head_size);
  CAPTURE(T_);
  const auto p = ref::random_problem(B, T_, H, head_size, 1000 + head_size * 7 + T_);
  auto state = p.s0;
  const auto y = ref::wkv7(p, state);
  const auto gpu = gpu_sequence<N, T>(p);
  const auto cpu = harness::run_sequence<N, ms::backend::scalar, T>(p);
  CHECK(ref::rms_relative(gpu.y, y) <= budget);
  CHECK(ref::rms_relative(gpu.state, state) <= budget);
  CHECK(ref::rms_relative(gpu.y, cpu.y) <= budget);
  CHECK(ref::rms_relative(gpu.state, cpu.state) <= budget);
}

}  // namespace

TEST_CASE("cuda wkv7::sequence matches the fp64 reference and the scalar backend (float: 1e-6)") {
  for (int T : {1, 17, 200}) {
    check_sequence<16, float>(16, 2, T, 3, 1e-6);
    check_sequence<48, float>(48, 2, T, 3, 1e-6);
    check_sequence<64, float>(64, 2, T, 3, 1e-6);
    check_sequence<128, float>(128, 1, T, 2, 1e-6);
    check_sequence<ms::dynamic, float>(24, 3, T, 2, 1e-6);  // runs the 32 kernel, masked
    check_sequence<ms::dynamic, float>(96, 1, T, 2, 1e-6);
  }
}

TEST_CASE("cuda wkv7::sequence over 4096 tokens (SPEC §7: 1e-6 for T <= 4096), and over none") {
  check_sequence<64, float>(64, 1, 4096, 3, 1e-6);
  const auto p = ref::random_problem(2, 0, 3, 64, 79);
  const auto gpu = gpu_sequence<64, float>(p);
  CHECK(gpu.y.empty());
  CHECK(gpu.state == widen(convert<float>(p.s0)));  // no token: the state as it came
}

TEST_CASE("cuda wkv7::sequence with half and bfloat16 storage (SPEC §7: 1e-2)") {
  check_sequence<64, Eigen::half>(64, 2, 100, 3, 1e-2);
  check_sequence<64, Eigen::bfloat16>(64, 2, 100, 3, 1e-2);
  check_sequence<ms::dynamic, Eigen::bfloat16>(40, 1, 33, 2, 1e-2);
}

TEST_CASE("cuda log-decay input equals decay input") {
  const auto p = ref::random_problem(2, 41, 3, 64, 77);
  const auto by_w = gpu_sequence<64, float>(p);
  const auto by_log = gpu_sequence<64, float>(p, ms::wkv7::decay_input::log_w);
  CHECK(ref::rms_relative(by_log.y, by_w.y) <= 1e-6);
  CHECK(ref::rms_relative(by_log.state, by_w.state) <= 1e-6);
}

TEST_CASE("cuda wkv7::step, token by token on a stream, equals one sequence call bit for bit") {
  const auto p = ref::random_problem(2, 23, 3, 48, 78);
  const device_inputs<float> in(p, p.w);
  mc::device_buffer<float> state(convert<float>(p.s0));
  auto y = poisoned<float>(p.seq_size());
  cudaStream_t stream;
  mc::check(cudaStreamCreate(&stream), "cudaStreamCreate");
  ms::wkv7::options opt;
  opt.exec.stream = stream;
  for (int t = 0; t < p.T; ++t) {
    // [B,1,H,N] views of token t are strided over the batch: copy token t of every row.
    std::vector<float> token(std::size_t(p.B) * p.H * p.N);
    auto slice = [&](const std::vector<double>& x) {
      for (int b = 0; b < p.B; ++b)
        for (std::size_t c = 0; c < std::size_t(p.H) * p.N; ++c)
          token[b * p.H * p.N + c] = float(x[p.at(b, t, 0) + c]);
      return mc::device_buffer<float>(token);
    };
    const auto r = slice(p.r), w = slice(p.w), k = slice(p.k), v = slice(p.v), a = slice(p.a), b = slice(p.b);
    auto yt = poisoned<float>(token.size());
    auto view = [&](const mc::device_buffer<float>& x) {
      return ms::sequence_view<const float>(x.data(), p.B, 1, p.H, p.N);
    };
    ms::wkv7::step<48, ms::backend::cuda>({view(r), view(w), view(k), view(v), view(a), view(b)},
                                          ms::state_view<float>(state.data(), p.B, p.H, p.N),
                                          ms::sequence_view<float>(yt.data(), p.B, 1, p.H, p.N), opt);
    mc::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    const auto host = yt.download();
    for (int b = 0; b < p.B; ++b)
      mc::check(cudaMemcpy(y.data() + p.at(b, t, 0), host.data() + b * p.H * p.N, sizeof(float) * p.H * p.N,
                           cudaMemcpyHostToDevice),
                "cudaMemcpy");
  }
  mc::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  const auto whole = gpu_sequence<48, float>(p);
  CHECK(widen(y.download()) == whole.y);
  CHECK(widen(state.download()) == whole.state);
}

namespace {

struct meta_state_result {
  std::vector<double> o, m;
};

/// The fused `cuda::meta_state_sequence` and the tag forms `encode_sequence` + `evolve` with backend::cuda.
template <int N, class T>
std::pair<meta_state_result, meta_state_result> gpu_meta_state(const ref::wkv_problem& p,
                                                               const harness::meta_state_inputs& msi) {
  const int n = msi.n;
  const device_inputs<T> in(p, p.w);
  const mc::device_buffer<T> x(convert<T>(msi.x));
  const mc::device_buffer<float> start(convert<float>(p.s0));
  const std::size_t out_size = p.seq_size() / p.N * n;
  mc::device_buffer<float> m(convert<float>(msi.m0));
  auto o = poisoned<T>(out_size);
  const ms::state_view<const float> start_view(start.data(), p.B, p.H, p.N);
  mc::meta_state_sequence<N>(in.all(), start_view, in.view(x), ms::state_view<float>(m.data(), p.B, p.H, n),
                             ms::sequence_view<T>(o.data(), p.B, p.T, p.H, n));
  synchronize();
  const meta_state_result fused{widen(o.download()), widen(m.download())};

  auto e = poisoned<T>(out_size), o2 = poisoned<T>(out_size);
  mc::device_buffer<float> m2(convert<float>(msi.m0));
  ms::meta_state::workspace<T> ws;
  ms::meta_state::encode_sequence<N, ms::backend::cuda>(in.all(), start_view, in.view(x),
                                                        ms::sequence_view<T>(e.data(), p.B, p.T, p.H, n), n, ws);
  auto evolve_on_device = [&](auto nn) {
    ms::meta_state::evolve<decltype(nn)::value, ms::backend::cuda>(
        in.view(in.w), in.view(in.a), in.view(in.b), ms::sequence_view<const T>(e.data(), p.B, p.T, p.H, n),
        in.view(x), ms::state_view<float>(m2.data(), p.B, p.H, n),
        ms::sequence_view<T>(o2.data(), p.B, p.T, p.H, n), ws);
  };
  if (n == N) evolve_on_device(std::integral_constant<int, N>{});  // a static sse_dim
  else evolve_on_device(std::integral_constant<int, ms::dynamic>{});
  synchronize();
  CHECK(start.download() == convert<float>(p.s0));  // the replay start is read only
  return {fused, {widen(o2.download()), widen(m2.download())}};
}

template <int N, class T>
void check_meta_state(int head_size, int n, int B, int T_, int H, double budget) {
  CAPTURE(head_size);
  CAPTURE(n);
  CAPTURE(T_);
  const auto p = ref::random_problem(B, T_, H, head_size, 2000 + head_size * 5 + n + T_);
  const auto msi = harness::random_meta_state(p, n, 3000 + n);
  auto m = msi.m0;
  const auto o = ref::meta_state(p, msi.x, n, m);
  const auto cpu = harness::run_meta_state<N, ms::backend::scalar, T>(p, msi);
  const auto [fused, separate] = gpu_meta_state<N, T>(p, msi);
  for (const auto* gpu : {&fused, &separate}) {
    CHECK(ref::rms_relative(gpu->o, o) <= budget);
    CHECK(ref::rms_relative(gpu->m, m) <= budget);
    CHECK(ref::rms_relative(gpu->o, cpu.y) <= budget);
    CHECK(ref::rms_relative(gpu->m, cpu.state) <= budget);
  }
}

}  // namespace

TEST_CASE("cuda Meta-State ops (fused, and encode_sequence + evolve) match the fp64 reference and the scalar "
          "backend (float: 1e-6)") {
  for (int T : {1, 33}) {
    check_meta_state<32, float>(32, 32, 2, T, 2, 1e-6);
    check_meta_state<48, float>(48, 20, 2, T, 3, 1e-6);
    check_meta_state<64, float>(64, 64, 1, T, 2, 1e-6);
    check_meta_state<ms::dynamic, float>(64, 40, 2, T, 2, 1e-6);
    check_meta_state<ms::dynamic, float>(24, 24, 2, T, 2, 1e-6);  // the 32 kernels, channels 24.. masked
    check_meta_state<ms::dynamic, float>(40, 16, 1, T, 3, 1e-6);  // the 48 kernels
    check_meta_state<128, float>(128, 128, 1, T, 1, 1e-6);
  }
  check_meta_state<64, Eigen::bfloat16>(64, 64, 1, 33, 2, 1e-2);
  check_meta_state<64, Eigen::half>(64, 48, 1, 33, 2, 1e-2);
}

namespace {

/// Runs `op(opt)` with `opt.exec.stream` a stream created non-blocking that is being captured
/// into a graph: a launch on that stream becomes a node of the graph (and runs when the graph
/// is launched), a launch elsewhere runs at once and leaves the graph empty. Returns the
/// graph's node count after running it.
template <class Op>
std::size_t captured_nodes(Op&& op) {
  cudaStream_t stream;
  mc::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  ms::wkv7::options opt;
  opt.exec.stream = stream;
  mc::check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
  op(opt);
  cudaGraph_t graph;
  mc::check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  std::size_t nodes = 0;
  mc::check(cudaGraphGetNodes(graph, nullptr, &nodes), "cudaGraphGetNodes");
  cudaGraphExec_t exec;
  mc::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  mc::check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  mc::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  mc::check(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
  mc::check(cudaGraphDestroy(graph), "cudaGraphDestroy");
  mc::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  return nodes;
}

}  // namespace

TEST_CASE("cuda ops launch on exec.stream (each captured from a non-blocking stream into a graph)") {
  const auto p = ref::random_problem(1, 9, 2, 32, 80);
  const auto msi = harness::random_meta_state(p, 32, 81);
  const device_inputs<float> in(p, p.w);
  const mc::device_buffer<float> x(convert<float>(msi.x)), start(convert<float>(p.s0));
  mc::device_buffer<float> state(convert<float>(p.s0)), m(convert<float>(msi.m0));
  auto y = poisoned<float>(p.seq_size()), e = poisoned<float>(p.seq_size());
  const ms::state_view<float> sv(state.data(), p.B, p.H, p.N), mv(m.data(), p.B, p.H, p.N);
  const ms::state_view<const float> start_view(start.data(), p.B, p.H, p.N);
  const ms::sequence_view<float> yv(y.data(), p.B, p.T, p.H, p.N), ev(e.data(), p.B, p.T, p.H, p.N);
  ms::meta_state::workspace<float> ws;

  auto expected_state = p.s0;
  const auto expected_y = ref::wkv7(p, expected_state);
  CHECK(captured_nodes([&](const ms::wkv7::options& opt) {
          ms::wkv7::sequence<32, ms::backend::cuda>(in.all(), sv, yv, opt);
        }) == 1);
  CHECK(ref::rms_relative(widen(y.download()), expected_y) <= 1e-6);
  CHECK(ref::rms_relative(widen(state.download()), expected_state) <= 1e-6);

  const ms::wkv7::inputs<float> first = in.all(1);
  const ms::sequence_view<float> y1(y.data(), p.B, 1, p.H, p.N);
  CHECK(captured_nodes([&](const ms::wkv7::options& opt) {
          ms::wkv7::step<32, ms::backend::cuda>(first, sv, y1, opt);
        }) == 1);

  auto expected_m = msi.m0;
  const auto expected_o = ref::meta_state(p, msi.x, msi.n, expected_m);
  CHECK(captured_nodes([&](const ms::wkv7::options& opt) {
          mc::meta_state_sequence<32>(in.all(), start_view, in.view(x), mv, yv, opt);
        }) == 1);
  CHECK(ref::rms_relative(widen(y.download()), expected_o) <= 1e-6);
  CHECK(ref::rms_relative(widen(m.download()), expected_m) <= 1e-6);

  m.upload(convert<float>(msi.m0));
  CHECK(captured_nodes([&](const ms::wkv7::options& opt) {
          ms::meta_state::encode_sequence<32, ms::backend::cuda>(in.all(), start_view, in.view(x), ev, 32, ws, opt);
          ms::meta_state::evolve<32, ms::backend::cuda>(in.view(in.w), in.view(in.a), in.view(in.b),
                                                        ms::sequence_view<const float>(ev), in.view(x), mv, yv, ws, opt);
        }) == 2);
  CHECK(ref::rms_relative(widen(y.download()), expected_o) <= 1e-6);
  CHECK(ref::rms_relative(widen(m.download()), expected_m) <= 1e-6);
}

TEST_CASE("cuda errors are exceptions that name the call or the tensor") {
  CHECK_THROWS_WITH_AS(mc::check(cudaErrorInvalidValue, "cudaMemcpy"),
                       doctest::Contains("cudaMemcpy: cudaErrorInvalidValue"), mc::cuda_error);
  const auto p = ref::random_problem(1, 3, 1, 160, 5);
  const auto too_large = [&] { gpu_sequence<ms::dynamic, float>(p); };
  CHECK_THROWS_WITH_AS(too_large(),
                       doctest::Contains("head size 160 is outside the cuda backend's range [1, 128]"),
                       ms::shape_error);
  const auto small = ref::random_problem(1, 3, 2, 32, 6);
  const device_inputs<float> in(small, small.w);
  mc::device_buffer<float> state(2 * 32 * 32), y(3 * 2 * 16);
  const auto wrong_y = [&] {
    ms::wkv7::sequence<32, ms::backend::cuda>(in.all(), ms::state_view<float>(state.data(), 1, 2, 32),
                                              ms::sequence_view<float>(y.data(), 1, 3, 2, 16));
  };
  CHECK_THROWS_WITH_AS(wrong_y(),
                       doctest::Contains("tensor 'y' has shape [1,3,2,16], expected [1,3,2,32]"), ms::shape_error);
  // Outputs over inputs are refused before anything runs (device addresses compare as host ones).
  const ms::sequence_view<float> over_r(in.r.data(), 1, 3, 2, 32);
  const auto in_place = [&] {
    ms::wkv7::sequence<32, ms::backend::cuda>(in.all(), ms::state_view<float>(state.data(), 1, 2, 32), over_r);
  };
  CHECK_THROWS_WITH_AS(in_place(), doctest::Contains("tensor 'y' overlaps 'r'"), ms::overlap_error);
  mc::device_buffer<float> m(2 * 32 * 32);
  const auto fused_in_place = [&] {
    mc::meta_state_sequence<32>(in.all(), ms::state_view<const float>(state.data(), 1, 2, 32), in.all().r,
                                ms::state_view<float>(m.data(), 1, 2, 32), over_r);
  };
  CHECK_THROWS_WITH_AS(fused_in_place(), doctest::Contains("tensor 'o' overlaps 'x'"), ms::overlap_error);
}

int main(int argc, char** argv) {
  const int devices = mc::device_count();
  if (devices == 0) {
    std::printf("no CUDA device found: the CUDA tests are skipped\n");
    return 77;  // ctest's SKIP_RETURN_CODE
  }
  cudaDeviceProp prop{};
  mc::check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("CUDA device 0: %s (sm_%d%d, %d multiprocessors)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  doctest::Context context(argc, argv);
  return context.run();
}
