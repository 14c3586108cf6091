// The metastate command-line tool: runs the library's ops on safetensors files.
#include <metastate/metastate.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
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
  // With no tokens the inputs hold no data whatever their other extents: the state's size
  // is checked before it is allocated.
  std::int64_t state_size = 1;
  for (const std::int64_t extent : {B, H, N, N})
    if (__builtin_mul_overflow(state_size, extent, &state_size) ||
        state_size > std::int64_t(std::vector<float>().max_size()))
      throw ms::shape_error("wkv7: the state [B,H,N,N] for 'r' of shape " + ms::shape_string(shape) + " is too large");
  std::vector<float> state(static_cast<std::size_t>(state_size), 0.0f);
  if (file.find("s0")) {
    state = file.read<float>("s0", {B, H, N, N});
    const auto bad = std::find_if(state.begin(), state.end(), [](float s) { return !std::isfinite(s); });
    if (bad != state.end())
      throw ms::value_error("wkv7: tensor 's0' has a non-finite value at flat index " +
                            std::to_string(bad - state.begin()));
  }

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

struct forward_args {
  std::string model, tokens, tokens_file, mode = "sequence", state_in, state_out, out;
  int threads = 0, chunk = 128;
};

std::vector<std::int64_t> parse_tokens(const std::string& list) {
  std::vector<std::int64_t> tokens;
  if (list.empty()) throw ms::value_error("--tokens: no tokens given");
  std::size_t pos = 0;
  while (pos <= list.size()) {  // (an empty item after a last comma is an error too)
    const std::size_t comma = std::min(list.find(',', pos), list.size());
    const std::string item = list.substr(pos, comma - pos);
    std::size_t used = 0;
    long long value = 0;
    try {
      // (stoll would skip leading blanks)
      if (!item.empty() && !std::isspace(static_cast<unsigned char>(item[0]))) value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) throw ms::value_error("--tokens: '" + item + "' is not an integer");
    tokens.push_back(value);
    pos = comma + 1;
  }
  return tokens;
}

std::vector<std::int64_t> read_tokens_file(const std::string& path) {
  const auto file = ms::io::safetensors_file::open(path);
  const auto& info = file.at("tokens");
  if (info.type != ms::io::dtype::I64 && info.type != ms::io::dtype::I32)
    throw ms::io_error(path + ": tensor 'tokens' must be I64 or I32, found " + ms::io::dtype_name(info.type));
  if (info.numel() != (info.shape.empty() ? 1 : info.shape.back()))
    throw ms::shape_error(path + ": tensor 'tokens' must be [T] or [1,T], found " + ms::shape_string(info.shape));
  if (info.numel() == 0) throw ms::value_error(path + ": tensor 'tokens' holds no tokens");
  return file.read<std::int64_t>("tokens");
}

int forward_command(const forward_args& args) {
  const auto weights = ms::model::load(ms::io::safetensors_file::open(args.model));
  const auto tokens = args.tokens_file.empty() ? parse_tokens(args.tokens) : read_tokens_file(args.tokens_file);
  ms::model::rwkv7_state state(weights.config, 1);
  if (!args.state_in.empty()) ms::model::restore_state(state, ms::io::safetensors_file::open(args.state_in));
  const auto T = static_cast<ms::index_t>(tokens.size());
  std::vector<float> logits(tokens.size() * weights.config.vocab);
  ms::model::forward_options opt;
  opt.exec.threads = args.threads;
  opt.chunk = args.mode == "step" ? 1 : args.chunk;
  ms::model::forward(weights, tokens.data(), T, state, logits.data(), opt);

  ms::io::safetensors_writer out;
  out.add<float>("logits", {T, weights.config.vocab}, logits.data());
  ms::model::add_state(out, state);
  out.write(args.out);
  if (!args.state_out.empty()) ms::model::save_state(state, args.state_out);
  return 0;
}

struct init_args {
  int layers = 0, width = 0, head_size = 64, vocab = 0, sse_dim = 0;
  std::uint64_t seed = 0;
  std::string init = "official", block = "ffn", out;
};

/// "ffn", "meta-state", or a comma-separated list with one kind per layer.
std::vector<ms::model::block_kind> parse_blocks(const std::string& spec, int layers) {
  std::vector<ms::model::block_kind> kinds;
  std::size_t pos = 0;
  while (pos <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string item = spec.substr(pos, comma - pos);
    if (item == "ffn") kinds.push_back(ms::model::block_kind::channel_mix);
    else if (item == "meta-state") kinds.push_back(ms::model::block_kind::meta_state);
    else throw ms::value_error("--block: '" + item + "' is neither 'ffn' nor 'meta-state'");
    pos = comma + 1;
  }
  if (kinds.size() == 1) kinds.assign(layers, kinds[0]);
  if (static_cast<int>(kinds.size()) != layers)
    throw ms::value_error("--block: " + std::to_string(kinds.size()) + " kinds for " + std::to_string(layers) + " layers");
  return kinds;
}

int init_command(const init_args& args) {
  auto config = ms::model::make_config(args.layers, args.width, args.head_size, args.vocab);
  config.blocks = parse_blocks(args.block, args.layers);
  if (args.sse_dim) {
    if (!config.has_meta_state()) throw ms::value_error("--sse-dim: no layer is a Meta-State layer (--block)");
    config.sse_dim = args.sse_dim;
  }
  auto weights = ms::model::initialise(config, args.seed,
                                       args.init == "random" ? ms::model::init_kind::random : ms::model::init_kind::official);
  ms::model::save(weights, args.out);
  return 0;
}

struct grow_args {
  std::string model, out, state_in, state_out;
  int head_size = 0, heads = 0;
  std::uint64_t seed = 0;
  double output_std = 0.0;
};

int grow_command(const grow_args& args) {
  auto weights = ms::model::load(ms::io::safetensors_file::open(args.model));
  ms::scaling::growth g;
  g.head_size = args.head_size, g.heads = args.heads, g.seed = args.seed, g.meta_state_output_std = args.output_std;
  auto grown = ms::scaling::grow(weights, g);
  ms::model::save(grown, args.out);
  if (!args.state_in.empty()) {
    ms::model::rwkv7_state state(weights.config, 1);
    ms::model::restore_state(state, ms::io::safetensors_file::open(args.state_in));
    ms::model::save_state(ms::scaling::grow_state(state, grown.config), args.state_out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // (CLI11's PositiveNumber reports 0 as "not in range 0.000000 to 1.797...e308")
  const auto at_least_one = CLI::Range(1, std::numeric_limits<int>::max());
  const auto at_least_zero = CLI::Range(0, std::numeric_limits<int>::max());
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
      ->check(at_least_zero);

  forward_args fwd;
  auto* forward = app.add_subcommand("forward", "Run a model on tokens: logits [T,V] and the final state");
  forward->add_option("--model", fwd.model, "checkpoint (safetensors, official tensor names)")->required();
  auto* tokens = forward->add_option("--tokens", fwd.tokens, "comma-separated token ids, e.g. 1,2,3");
  auto* tokens_file = forward->add_option("--tokens-file", fwd.tokens_file, "safetensors file with an I64/I32 'tokens'");
  tokens->excludes(tokens_file);
  forward->add_option("--mode", fwd.mode, "sequence (chunked prefill) or step (one token at a time)")
      ->check(CLI::IsMember({"sequence", "step"}))
      ->capture_default_str();
  forward->add_option("--chunk", fwd.chunk, "tokens per chunk in sequence mode")->check(at_least_one)->capture_default_str();
  forward->add_option("--state-in", fwd.state_in, "start from this state (a --state-out or --out file)");
  forward->add_option("--state-out", fwd.state_out, "also write the final state here");
  forward->add_option("--out", fwd.out, "output: logits and state.{l}.att_x_prev/att_kv/ffn_x_prev (ms for Meta-State layers)")->required();
  forward->add_option("--threads", fwd.threads, "threads (0: OMP_NUM_THREADS or all)")->check(at_least_zero);

  init_args ini;
  auto* init = app.add_subcommand("init", "Write a randomly initialised RWKV-7 / Meta-State model (official x070 init rules)");
  init->add_option("--layers", ini.layers, "layers")->required()->check(at_least_one);
  init->add_option("--width", ini.width, "model width C")->required()->check(at_least_one);
  init->add_option("--head-size", ini.head_size, "head size N (divides C)")->capture_default_str()->check(at_least_one);
  init->add_option("--vocab", ini.vocab, "vocabulary size V")->required()->check(at_least_one);
  init->add_option("--seed", ini.seed, "random seed")->capture_default_str();
  init->add_option("--init", ini.init, "official, or random (every tensor non-zero: for tests)")
      ->check(CLI::IsMember({"official", "random"}))
      ->capture_default_str();
  init->add_option("--block", ini.block, "ffn, meta-state, or one per layer: ffn,meta-state,...")->capture_default_str();
  init->add_option("--sse-dim", ini.sse_dim, "Meta-State encoder size n <= head size (default: head size)")
      ->check(at_least_one);
  init->add_option("--out", ini.out, "output checkpoint")->required();

  grow_args grw;
  auto* grow = app.add_subcommand("grow", "Grow a model (and a live state) exactly: larger heads or more heads");
  grow->add_option("--model", grw.model, "checkpoint to grow")->required();
  grow->add_option("--out", grw.out, "grown checkpoint (metadata records the original sizes)")->required();
  grow->add_option("--head-size", grw.head_size, "new head size N' (a multiple of the GroupNorm group size)")
      ->check(at_least_one);
  grow->add_option("--heads", grw.heads, "new number of heads H' (ChannelMix-only models)")->check(at_least_one);
  grow->add_option("--seed", grw.seed, "seed of the new entries' initialisation")->capture_default_str();
  grow->add_option("--meta-state-output-std", grw.output_std,
                   "std of new Meta-State W_o columns (0: zero, exact; the paper's small random values are not)")
      ->check(CLI::NonNegativeNumber);
  auto* state_in = grow->add_option("--state-in", grw.state_in, "a live state of the model (batch 1) to grow too");
  auto* state_out = grow->add_option("--state-out", grw.state_out, "where the grown state goes");
  state_in->needs(state_out);
  state_out->needs(state_in);

  CLI11_PARSE(app, argc, argv);
  try {
    if (forward->parsed() && tokens->count() == 0 && tokens_file->count() == 0)
      throw ms::value_error("forward: give --tokens or --tokens-file");
    if (wkv7->parsed()) return wkv7_command(wkv);
    if (forward->parsed()) return forward_command(fwd);
    if (init->parsed()) return init_command(ini);
    if (grow->parsed()) return grow_command(grw);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "metastate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
