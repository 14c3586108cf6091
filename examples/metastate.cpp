// The metastate command-line tool: runs the library's ops on safetensors files.
#include <metastate/metastate.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace ms = metastate;

namespace {

struct wkv7_args {
  std::string in, out, backend = "simd";
  int threads = 0;
};

template <class Backend>
void run_wkv7(const ms::wkv7::inputs<float>& in, ms::state_view<float> state, ms::sequence_view<float> y,
              const ms::wkv7::options& opt) {
  ms::wkv7::sequence<ms::dynamic, Backend>(in, state, y, opt);
}

int wkv7_command(const wkv7_args& args) {
  const auto file = ms::io::safetensors_file::open(args.in);
  const auto& r_info = file.at("r");
  if (r_info.shape.size() != 4)
    throw ms::shape_error("wkv7: tensor 'r' must be [B,T,H,N], found " + ms::shape_string(r_info.shape));
  const auto& shape = r_info.shape;
  const std::int64_t B = shape[0], T = shape[1], H = shape[2], N = shape[3];
  std::vector<float> x[6];
  const char* names[6] = {"r", "w", "k", "v", "a", "b"};
  for (int i = 0; i < 6; ++i) x[i] = file.read<float>(names[i], shape);
  std::vector<float> state(static_cast<std::size_t>(B * H * N * N), 0.0f);
  if (file.find("s0")) state = file.read<float>("s0", {B, H, N, N});

  auto view = [&](const std::vector<float>& v) { return ms::sequence_view<const float>(v.data(), B, T, H, N); };
  const ms::wkv7::inputs<float> in{view(x[0]), view(x[1]), view(x[2]), view(x[3]), view(x[4]), view(x[5])};
  ms::wkv7::validate_values(in);
  std::vector<float> y(x[0].size());
  const ms::state_view<float> sv(state.data(), B, H, N);
  const ms::sequence_view<float> yv(y.data(), B, T, H, N);
  ms::wkv7::options opt;
  opt.exec.threads = args.threads;
  if (args.backend == "scalar") run_wkv7<ms::backend::scalar>(in, sv, yv, opt);
  else if (args.backend == "eigen") run_wkv7<ms::backend::eigen>(in, sv, yv, opt);
  else run_wkv7<ms::backend::simd<>>(in, sv, yv, opt);

  ms::io::safetensors_writer out;
  out.add<float>("y", {B, T, H, N}, y.data());
  out.add<float>("sT", {B, H, N, N}, state.data());
  out.write(args.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"metastate: RWKV-7 and Meta-State recurrent-state kernels (library " +
               std::string(ms::version_string) + ")"};
  app.require_subcommand(1);

  wkv7_args wkv;
  auto* wkv7 = app.add_subcommand("wkv7", "Run the WKV-7 op: r,w,k,v,a,b [B,T,H,N] (+ s0 [B,H,N,N]) -> y, sT");
  wkv7->add_option("--in", wkv.in, "input safetensors file (F32/F16/BF16/F64 tensors)")->required();
  wkv7->add_option("--out", wkv.out, "output safetensors file (F32 y and sT)")->required();
  wkv7->add_option("--backend", wkv.backend, "kernel backend")
      ->check(CLI::IsMember({"scalar", "eigen", "simd"}))
      ->capture_default_str();
  wkv7->add_option("--threads", wkv.threads, "OpenMP threads (0: OMP_NUM_THREADS or all)")
      ->check(CLI::NonNegativeNumber);

  CLI11_PARSE(app, argc, argv);
  try {
    if (wkv7->parsed()) return wkv7_command(wkv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "metastate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
