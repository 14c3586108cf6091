// RWKV-7 model weights: configuration, official tensor names and shapes, load/save, initialisation.
#pragma once

#include <Eigen/Core>
#include <Eigen/QR>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "metastate/core/error.hpp"
#include "metastate/io/safetensors.hpp"

namespace metastate::model {

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_vector = Eigen::Matrix<float, 1, Eigen::Dynamic>;

/// What follows TimeMix in a block: the official ChannelMix (FFN) or a Meta-State layer (SPEC §4).
enum class block_kind { channel_mix, meta_state };

/// Every size of an RWKV-7 / Meta-State model. Loading reads them from tensor shapes and
/// metadata, never from formulas.
struct rwkv7_config {
  int layers = 0, width = 0, heads = 0, head_size = 0, vocab = 0;
  int ffn_width = 0;   ///< of the ChannelMix layers (0 if there are none)
  int group_size = 0;  ///< GroupNorm group (channels); equals head_size in released models
  int decay_rank = 0, icl_rank = 0, value_rank = 0, gate_rank = 0;  ///< LoRA ranks of w, a, v, g
  std::vector<block_kind> blocks;  ///< one per layer
  int sse_dim = 0;                 ///< n of the Meta-State layers (≤ head_size)
  bool projection = false;         ///< Meta-State layers carry the input projection P [N, N0]
  /// Sizes before the first growth (SPEC §5): entries beyond them are new. Equal to the
  /// current sizes for a model that never grew. Saved as metadata `original_*`.
  int original_heads = 0, original_head_size = 0, original_sse_dim = 0;
  bool original_projection = false;
  bool grown() const {
    return original_heads != heads || original_head_size != head_size || original_sse_dim != sse_dim ||
           original_projection != projection;
  }
  int attention_width() const { return heads * head_size; }
  /// N0 = C / H: the per-head slice of the Meta-State input z.
  int input_head_size() const { return heads ? width / heads : 0; }
  bool is_meta_state(int layer) const { return blocks[layer] == block_kind::meta_state; }
  bool has_meta_state() const {
    for (auto b : blocks)
      if (b == block_kind::meta_state) return true;
    return false;
  }
};

struct time_mix_weights {
  row_vector x_r, x_w, x_k, x_v, x_a, x_g;  // token-shift mixes [C]
  row_vector w0, a0, v0, k_k, k_a;          // [A]
  matrix w1, w2, a1, a2, v1, v2, g1, g2;    // LoRA [in, out]
  matrix r_k;                               // [H, N]
  matrix receptance, key, value, output;    // Linear [out, in]
  row_vector ln_x_weight, ln_x_bias;        // [A]
};

struct channel_mix_weights {
  row_vector x_k;    // [C]
  matrix key, value;  // [F, C], [C, F]
};

struct meta_state_weights {
  matrix output;  // W_o [C, H·n]
  matrix proj;    // P [N, N0], only after growth (empty: identity)
};

struct layer_weights {
  row_vector ln1_weight, ln1_bias, ln2_weight, ln2_bias;
  time_mix_weights att;
  channel_mix_weights ffn;  // empty in a Meta-State layer
  meta_state_weights ms;    // empty in a ChannelMix layer
};

struct rwkv7_weights {
  rwkv7_config config;
  matrix emb, head;  // [V, C]
  row_vector ln0_weight, ln0_bias, ln_out_weight, ln_out_bias;
  std::vector<layer_weights> layers;
};

namespace detail {

/// One named parameter: its official name and shape, and where it lives.
struct parameter {
  std::string name;
  std::vector<std::int64_t> shape;
  float* data;
  std::int64_t size() const {
    std::int64_t n = 1;
    for (auto e : shape) n *= e;
    return n;
  }
};

/// Sizes the tensors of `w` for `w.config` (contents unspecified).
inline void allocate(rwkv7_weights& w) {
  const auto& c = w.config;
  const int C = c.width, A = c.attention_width(), F = c.ffn_width, V = c.vocab;
  w.emb.resize(V, C);
  w.head.resize(V, C);
  for (auto* v : {&w.ln0_weight, &w.ln0_bias, &w.ln_out_weight, &w.ln_out_bias}) v->resize(C);
  w.layers.resize(c.layers);
  for (int l = 0; l < c.layers; ++l) {
    auto& L = w.layers[l];
    for (auto* v : {&L.ln1_weight, &L.ln1_bias, &L.ln2_weight, &L.ln2_bias}) v->resize(C);
    auto& a = L.att;
    for (auto* v : {&a.x_r, &a.x_w, &a.x_k, &a.x_v, &a.x_a, &a.x_g}) v->resize(C);
    for (auto* v : {&a.w0, &a.a0, &a.k_k, &a.k_a, &a.ln_x_weight, &a.ln_x_bias}) v->resize(A);
    a.v0.resize(l == 0 ? 0 : A);
    a.w1.resize(C, c.decay_rank), a.w2.resize(c.decay_rank, A);
    a.a1.resize(C, c.icl_rank), a.a2.resize(c.icl_rank, A);
    a.v1.resize(l == 0 ? 0 : C, c.value_rank), a.v2.resize(l == 0 ? 0 : c.value_rank, A);
    a.g1.resize(C, c.gate_rank), a.g2.resize(c.gate_rank, A);
    a.r_k.resize(c.heads, c.head_size);
    a.receptance.resize(A, C), a.key.resize(A, C), a.value.resize(A, C), a.output.resize(C, A);
    if (c.is_meta_state(l)) {
      L.ms.output.resize(C, c.heads * c.sse_dim);
      L.ms.proj.resize(c.projection ? c.head_size : 0, c.projection ? c.input_head_size() : 0);
    } else {
      L.ffn.x_k.resize(C);
      L.ffn.key.resize(F, C), L.ffn.value.resize(C, F);
    }
  }
}

}  // namespace detail

/// Every parameter with its official name and shape (vectors as the released `[1,1,X]`
/// or `[X]`), in a fixed order. The one list behind load, save and initialisation.
inline std::vector<detail::parameter> parameters(rwkv7_weights& w) {
  std::vector<detail::parameter> out;
  auto mat = [&](const std::string& name, matrix& m) { out.push_back({name, {m.rows(), m.cols()}, m.data()}); };
  auto vec = [&](const std::string& name, row_vector& v) { out.push_back({name, {v.size()}, v.data()}); };
  auto mix = [&](const std::string& name, row_vector& v) { out.push_back({name, {1, 1, v.size()}, v.data()}); };
  mat("emb.weight", w.emb);
  vec("blocks.0.ln0.weight", w.ln0_weight);
  vec("blocks.0.ln0.bias", w.ln0_bias);
  for (int l = 0; l < w.config.layers; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    auto& L = w.layers[l];
    vec(p + "ln1.weight", L.ln1_weight), vec(p + "ln1.bias", L.ln1_bias);
    vec(p + "ln2.weight", L.ln2_weight), vec(p + "ln2.bias", L.ln2_bias);
    auto& a = L.att;
    const std::string q = p + "att.";
    mix(q + "x_r", a.x_r), mix(q + "x_w", a.x_w), mix(q + "x_k", a.x_k);
    mix(q + "x_v", a.x_v), mix(q + "x_a", a.x_a), mix(q + "x_g", a.x_g);
    mix(q + "w0", a.w0), mat(q + "w1", a.w1), mat(q + "w2", a.w2);
    mix(q + "a0", a.a0), mat(q + "a1", a.a1), mat(q + "a2", a.a2);
    if (l > 0) mix(q + "v0", a.v0), mat(q + "v1", a.v1), mat(q + "v2", a.v2);
    mat(q + "g1", a.g1), mat(q + "g2", a.g2);
    mix(q + "k_k", a.k_k), mix(q + "k_a", a.k_a), mat(q + "r_k", a.r_k);
    mat(q + "receptance.weight", a.receptance), mat(q + "key.weight", a.key);
    mat(q + "value.weight", a.value), mat(q + "output.weight", a.output);
    vec(q + "ln_x.weight", a.ln_x_weight), vec(q + "ln_x.bias", a.ln_x_bias);
    if (w.config.is_meta_state(l)) {
      mat(p + "ms.output.weight", L.ms.output);
      if (w.config.projection) mat(p + "ms.proj", L.ms.proj);
    } else {
      mix(p + "ffn.x_k", L.ffn.x_k);
      mat(p + "ffn.key.weight", L.ffn.key), mat(p + "ffn.value.weight", L.ffn.value);
    }
  }
  vec("ln_out.weight", w.ln_out_weight);
  vec("ln_out.bias", w.ln_out_bias);
  mat("head.weight", w.head);
  return out;
}

namespace detail {

/// `[1,1,X]` and `[X]` are the same vector.
inline std::vector<std::int64_t> squeeze(std::vector<std::int64_t> s) {
  while (s.size() > 1 && s.front() == 1) s.erase(s.begin());
  return s;
}

inline const io::tensor_info& find_2d(const io::safetensors_file& f, const std::string& name) {
  const auto& t = f.at(name);
  if (t.shape.size() != 2)
    throw shape_error(f.source() + ": tensor '" + name + "' has shape " + shape_string(t.shape) +
                      ", expected a matrix");
  return t;
}

}  // namespace detail

/// Throws unless the sizes are positive, a block kind is given per layer, and the GroupNorm
/// group divides the attention width (a zero would be a division by zero later).
inline void check_sizes(const rwkv7_config& c, const std::string& source) {
  if (c.layers <= 0 || c.width <= 0 || c.heads <= 0 || c.head_size <= 0 || c.vocab <= 0)
    throw shape_error(source + ": need positive sizes, got layers " + std::to_string(c.layers) + ", width " +
                      std::to_string(c.width) + ", heads " + std::to_string(c.heads) + ", head size " +
                      std::to_string(c.head_size) + ", vocab " + std::to_string(c.vocab));
  if (static_cast<int>(c.blocks.size()) != c.layers)
    throw shape_error(source + ": " + std::to_string(c.blocks.size()) + " block kinds for " +
                      std::to_string(c.layers) + " layers");
  if (c.group_size <= 0 || c.attention_width() % c.group_size != 0)
    throw shape_error(source + ": the GroupNorm group size " + std::to_string(c.group_size) +
                      " does not divide the attention width " + std::to_string(c.attention_width()));
}

/// Throws unless the Meta-State sizes are consistent: 1 ≤ sse_dim ≤ N, H divides C, and
/// N = N0 unless there is a projection.
inline void check_meta_state(const rwkv7_config& c, const std::string& source) {
  if (c.sse_dim < 1 || c.sse_dim > c.head_size)
    throw shape_error(source + ": sse_dim " + std::to_string(c.sse_dim) + " must be in [1, head size " +
                      std::to_string(c.head_size) + "]");
  if (c.width % c.heads != 0)
    throw shape_error(source + ": a Meta-State layer needs the width " + std::to_string(c.width) +
                      " divisible by the heads " + std::to_string(c.heads));
  if (!c.projection && c.head_size != c.input_head_size())
    throw shape_error(source + ": head size " + std::to_string(c.head_size) + " differs from width/heads " +
                      std::to_string(c.input_head_size()) + " but the Meta-State layers have no 'ms.proj'");
}

namespace detail {

inline int metadata_int(const io::safetensors_file& f, const std::string& key, int fallback) {
  const auto it = f.metadata().find(key);
  if (it == f.metadata().end()) return fallback;
  try {
    std::size_t used = 0;
    const int value = std::stoi(it->second, &used);
    if (used == it->second.size()) return value;
  } catch (const std::exception&) {
  }
  throw io_error(f.source() + ": metadata " + key + " = '" + it->second + "' is not an integer");
}

}  // namespace detail

/// Reads the model's sizes from the shapes of a checkpoint's tensors (SPEC §3, §6).
inline rwkv7_config read_config(const io::safetensors_file& f) {
  rwkv7_config c;
  const auto& emb = detail::find_2d(f, "emb.weight");
  c.vocab = static_cast<int>(emb.shape[0]);
  c.width = static_cast<int>(emb.shape[1]);
  while (f.find("blocks." + std::to_string(c.layers) + ".ln1.weight")) ++c.layers;
  if (c.layers == 0) throw io_error(f.source() + ": no layers (no tensor 'blocks.0.ln1.weight')");
  const auto& r_k = detail::find_2d(f, "blocks.0.att.r_k");
  c.heads = static_cast<int>(r_k.shape[0]);
  c.head_size = static_cast<int>(r_k.shape[1]);
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    const bool ffn = f.find(p + "ffn.key.weight") != nullptr, ms = f.find(p + "ms.output.weight") != nullptr;
    if (ffn == ms)
      throw io_error(f.source() + ": layer " + std::to_string(l) + " must have either ffn.* (ChannelMix) or ms.* " +
                     "(Meta-State) tensors, it has " + (ffn ? "both" : "neither"));
    c.blocks.push_back(ffn ? block_kind::channel_mix : block_kind::meta_state);
    if (ffn && c.ffn_width == 0) c.ffn_width = static_cast<int>(detail::find_2d(f, p + "ffn.key.weight").shape[0]);
    if (ms && !c.projection) c.projection = f.find(p + "ms.proj") != nullptr;
  }
  c.decay_rank = static_cast<int>(detail::find_2d(f, "blocks.0.att.w1").shape[1]);
  c.icl_rank = static_cast<int>(detail::find_2d(f, "blocks.0.att.a1").shape[1]);
  c.gate_rank = static_cast<int>(detail::find_2d(f, "blocks.0.att.g1").shape[1]);
  c.value_rank = c.layers > 1 ? static_cast<int>(detail::find_2d(f, "blocks.1.att.v1").shape[1]) : 0;
  c.group_size = detail::metadata_int(f, "ln_x_group_size", c.head_size);
  if (c.group_size <= 0 || c.attention_width() % c.group_size != 0)
    throw io_error(f.source() + ": ln_x_group_size " + std::to_string(c.group_size) +
                   " does not divide the attention width " + std::to_string(c.attention_width()));
  c.sse_dim = detail::metadata_int(f, "sse_dim", c.head_size);
  c.original_heads = detail::metadata_int(f, "original_heads", c.heads);
  c.original_head_size = detail::metadata_int(f, "original_head_size", c.head_size);
  c.original_sse_dim = detail::metadata_int(f, "original_sse_dim", c.sse_dim);
  const int original_projection = detail::metadata_int(f, "original_projection", c.projection);
  c.original_projection = original_projection != 0;
  // Growth only adds: each size before it lies between its least value and the current one.
  struct original {
    const char* key;
    int value, least, current;
  };
  const original originals[] = {{"original_heads", c.original_heads, 1, c.heads},
                                {"original_head_size", c.original_head_size, 1, c.head_size},
                                {"original_sse_dim", c.original_sse_dim, 1, c.sse_dim},
                                {"original_projection", original_projection, 0, int(c.projection)}};
  for (const auto& o : originals)
    if (o.value < o.least || o.value > o.current)
      throw io_error(f.source() + ": metadata " + o.key + " = " + std::to_string(o.value) + " must be in [" +
                     std::to_string(o.least) + ", " + std::to_string(o.current) + "] (the model's current size)");
  check_sizes(c, f.source());
  if (c.has_meta_state()) check_meta_state(c, f.source());
  return c;
}

/// Loads a checkpoint with the official tensor names (F32/F16/BF16/F64). Missing, extra and
/// mis-shaped tensors are reported by name.
inline rwkv7_weights load(const io::safetensors_file& f) {
  rwkv7_weights w;
  w.config = read_config(f);
  detail::allocate(w);
  std::set<std::string> unused;
  for (const auto& name : f.names()) unused.insert(name);
  for (auto& p : parameters(w)) {
    const auto* t = f.find(p.name);
    if (!t) throw io_error(f.source() + ": missing tensor '" + p.name + "'");
    if (detail::squeeze(t->shape) != detail::squeeze(p.shape))
      expect_shape(f.source().c_str(), p.name, t->shape, p.shape);
    const auto values = f.read<float>(p.name);
    std::copy(values.begin(), values.end(), p.data);
    unused.erase(p.name);
  }
  if (!unused.empty()) throw io_error(f.source() + ": unexpected tensor '" + *unused.begin() + "'");
  return w;
}

/// Writes the weights as F32 with the official names, and `ln_x_group_size`, `sse_dim` and
/// (after growth) the `original_*` sizes as metadata.
inline void save(rwkv7_weights& w, const std::string& path) {
  io::safetensors_writer out;
  for (auto& p : parameters(w)) out.add<float>(p.name, p.shape, p.data);
  out.set_metadata("ln_x_group_size", std::to_string(w.config.group_size));
  const auto& c = w.config;
  if (c.has_meta_state()) out.set_metadata("sse_dim", std::to_string(c.sse_dim));
  if (c.grown()) {
    out.set_metadata("original_heads", std::to_string(c.original_heads));
    out.set_metadata("original_head_size", std::to_string(c.original_head_size));
    out.set_metadata("original_sse_dim", std::to_string(c.original_sse_dim));
    out.set_metadata("original_projection", std::to_string(int(c.original_projection)));
  }
  out.write(path);
}

/// How `initialise` fills the weights.
enum class init_kind {
  official,  ///< the official x070 training init (several matrices start at zero)
  random,    ///< every tensor random and non-zero, so that every path affects the logits (tests)
};

namespace detail {

inline int lora_rank(double factor, int width) {
  return std::max(32, static_cast<int>(std::lround(factor * std::sqrt(double(width)) / 32.0)) * 32);
}

/// Orthogonal rows/columns (QR of a Gaussian matrix) scaled by `gain`, as torch's orthogonal_.
inline void orthogonal(matrix& m, double gain, std::mt19937_64& gen) {
  const bool tall = m.rows() >= m.cols();
  Eigen::MatrixXd g(tall ? m.rows() : m.cols(), tall ? m.cols() : m.rows());
  std::normal_distribution<double> normal;
  for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = normal(gen);
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(g.rows(), g.cols());
  // Sign fix so the distribution is uniform (diag of R positive).
  for (Eigen::Index j = 0; j < q.cols(); ++j)
    if (qr.matrixQR()(j, j) < 0) q.col(j) *= -1;
  if (tall) m = (gain * q).cast<float>();
  else m = (gain * q.transpose()).cast<float>();
}

}  // namespace detail

/// Sizes with the official LoRA ranks for a width (as the x070 training code chooses them).
inline rwkv7_config make_config(int layers, int width, int head_size, int vocab) {
  if (layers <= 0 || width <= 0 || head_size <= 0 || vocab <= 0 || width % head_size != 0)
    throw shape_error("rwkv7 config: need positive sizes and width divisible by head size, got layers " +
                      std::to_string(layers) + ", width " + std::to_string(width) + ", head size " +
                      std::to_string(head_size) + ", vocab " + std::to_string(vocab));
  rwkv7_config c;
  c.layers = layers, c.width = width, c.head_size = head_size, c.heads = width / head_size, c.vocab = vocab;
  c.ffn_width = 4 * width;
  c.group_size = head_size;
  c.decay_rank = detail::lora_rank(2.5, width);
  c.icl_rank = detail::lora_rank(2.5, width);
  c.value_rank = detail::lora_rank(1.7, width);
  c.gate_rank = detail::lora_rank(5.0, width);
  c.blocks.assign(layers, block_kind::channel_mix);
  c.sse_dim = head_size;
  c.original_heads = c.heads, c.original_head_size = head_size, c.original_sse_dim = head_size;
  return c;
}

/// Initialises a model of the given sizes (one that has never grown: its `original_*` sizes
/// are set to them). `official` follows the x070 training code
/// (RWKV-LM `RWKV-v7/train_temp`); `random` makes every tensor non-trivial.
inline rwkv7_weights initialise(const rwkv7_config& config, std::uint64_t seed, init_kind kind = init_kind::official) {
  check_sizes(config, "initialise");
  if (config.has_meta_state()) check_meta_state(config, "initialise");
  rwkv7_weights w;
  w.config = config;
  // A new model has never grown, whatever the config said of original sizes.
  w.config.original_heads = config.heads, w.config.original_head_size = config.head_size;
  w.config.original_sse_dim = config.sse_dim, w.config.original_projection = config.projection;
  detail::allocate(w);
  std::mt19937_64 gen(seed);
  const auto& c = config;
  const int C = c.width, A = c.attention_width(), N = c.head_size, L = c.layers;
  auto uniform = [&](auto& m, double lo, double hi) {
    std::uniform_real_distribution<float> d(static_cast<float>(lo), static_cast<float>(hi));
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = d(gen);
  };
  auto normal = [&](auto& m, double mean, double sd) {
    std::normal_distribution<float> d(static_cast<float>(mean), static_cast<float>(sd));
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = d(gen);
  };

  if (kind == init_kind::random) {
    auto has = [](const std::string& name, const char* part) { return name.find(part) != std::string::npos; };
    for (auto& p : parameters(w)) {
      Eigen::Map<row_vector> m(p.data, p.size());
      const auto& n = p.name;
      if (n == "emb.weight") normal(m, 0.0, 1.0);
      else if (has(n, "r_k")) normal(m, 0.0, 0.5);
      else if (p.shape.size() == 2 && has(n, ".weight")) normal(m, 0.0, 1.0 / std::sqrt(double(p.shape[1])));  // [out, in]
      else if (p.shape.size() == 2) normal(m, 0.0, 1.0 / std::sqrt(double(p.shape[0])));  // LoRA [in, out]
      else if (has(n, ".x_")) uniform(m, 0.0, 1.0);
      else if (has(n, "ln") && has(n, "weight")) normal(m, 1.0, 0.2);
      else if (has(n, "ln")) normal(m, 0.0, 0.2);
      else if (has(n, "att.w0")) uniform(m, -3.0, 1.0);
      else if (has(n, "k_k") || has(n, "k_a")) uniform(m, 0.5, 1.5);
      else normal(m, 0.0, 0.5);  // a0, v0
    }
    return w;
  }

  uniform(w.emb, -1e-4, 1e-4);
  w.ln0_weight.setOnes(), w.ln0_bias.setZero(), w.ln_out_weight.setOnes(), w.ln_out_bias.setZero();
  detail::orthogonal(w.head, 0.5 * (c.vocab > C ? std::sqrt(double(c.vocab) / C) : 1.0), gen);
  for (int l = 0; l < L; ++l) {
    auto& Lw = w.layers[l];
    auto& a = Lw.att;
    Lw.ln1_weight.setOnes(), Lw.ln1_bias.setZero(), Lw.ln2_weight.setOnes(), Lw.ln2_bias.setZero();
    const double ratio_0_to_1 = L > 1 ? double(l) / (L - 1) : 0.0;
    const double ratio_1_to_almost0 = 1.0 - double(l) / L;
    for (int i = 0; i < C; ++i) {
      const double ddd = double(i) / C;
      a.x_r[i] = float(1 - std::pow(ddd, 0.2 * ratio_1_to_almost0));
      a.x_w[i] = float(1 - std::pow(ddd, 0.9 * ratio_1_to_almost0));
      a.x_k[i] = float(1 - std::pow(ddd, 0.7 * ratio_1_to_almost0));
      a.x_v[i] = float(1 - std::pow(ddd, 0.7 * ratio_1_to_almost0));
      a.x_a[i] = float(1 - std::pow(ddd, 0.9 * ratio_1_to_almost0));
      a.x_g[i] = float(1 - std::pow(ddd, 0.2 * ratio_1_to_almost0));
      if (!c.is_meta_state(l)) Lw.ffn.x_k[i] = float(1 - std::pow(ddd, std::pow(ratio_1_to_almost0, 4)));
    }
    for (int n = 0; n < A; ++n) {
      const double linear = A > 1 ? double(n) / (A - 1) - 0.5 : 0.0;
      double zigzag = N > 1 ? ((n % N) - (N - 1) / 2.0) / ((N - 1) / 2.0) : 0.0;
      zigzag *= std::abs(zigzag);
      const double www = -6 + 6 * std::pow(A > 1 ? double(n) / (A - 1) : 0.0, 1 + std::pow(ratio_0_to_1, 0.3));
      a.w0[n] = float(www + 0.5 + zigzag * 2.5);
      a.a0[n] = float(-0.19 + zigzag * 0.3 + linear * 0.4);
      if (l > 0) a.v0[n] = float(0.73 - linear * 0.4);
      a.k_k[n] = float(0.71 - linear * 0.1);
      a.k_a[n] = 1.02f;
      a.ln_x_weight[n] = float(std::pow((1.0 + l) / L, 0.7));
    }
    a.ln_x_bias.setZero();
    a.r_k.setConstant(-0.04f);
    a.w1.setZero(), a.a1.setZero(), a.v1.setZero(), a.g1.setZero();
    for (auto* m : {&a.w2, &a.a2, &a.v2, &a.g2})
      if (m->size() > 0) detail::orthogonal(*m, 0.1, gen);
    const double s = 1.0 / std::sqrt(double(C));
    uniform(a.receptance, -0.5 * s, 0.5 * s);
    uniform(a.key, -0.05 * s, 0.05 * s);
    uniform(a.value, -0.5 * s, 0.5 * s);
    a.output.setZero();
    if (c.is_meta_state(l)) {
      Lw.ms.output.setZero();  // like every output projection of x070: the layer starts as identity
      if (c.projection) Lw.ms.proj = matrix::Identity(c.head_size, c.input_head_size());
    } else {
      detail::orthogonal(Lw.ffn.key, 2.0, gen);
      Lw.ffn.value.setZero();
    }
  }
  return w;
}

}  // namespace metastate::model
