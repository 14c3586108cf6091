// The recurrent state of an RWKV-7 model (per layer: token-shift rows and WKV states), and its files.
#pragma once

#include <string>
#include <vector>

#include "metastate/core/aligned.hpp"
#include "metastate/core/error.hpp"
#include "metastate/io/safetensors.hpp"
#include "metastate/meta_state/meta_state.hpp"
#include "metastate/model/weights.hpp"

namespace metastate::model {

/// Scratch of the forward pass, owned by the state so that decoding allocates nothing
/// after the first call (sizes only grow).
struct forward_workspace {
  matrix x, xn, prev, mix, r, w, k, v, a, b, g, y, v_first, ffn;
  // The LoRA hidden activations, one per LoRA: their ranks differ, and one shared buffer
  // would be reallocated at every switch (seven heap allocations per decoded token).
  matrix lora_w, lora_v, lora_a, lora_g;
  // What a Meta-State layer's WKV-7 op records for the encoder: the state every
  // meta_state::record_every tokens and u_t of every token of the chunk.
  wkv7::record<float> kv_record{meta_state::record_every};
  matrix encoded, readout;      // e and o of a Meta-State layer, [B·T, H·n]
  meta_state::workspace<float> ms;
};

/// The recurrent state of a batch of `batch` independent sequences. Copying forks it.
struct rwkv7_state {
  rwkv7_config config;
  int batch = 0;
  std::vector<matrix> att_x_prev;           ///< per layer [B, C]: previous token's ln1 output
  /// Per layer [B, H, N, N] WKV states (row = value index). Cache-line aligned, as the `simd`
  /// step kernel, which works on them in place, needs for its speed (README: Alignment).
  std::vector<aligned_vector<float>> att_kv;
  std::vector<matrix> ffn_x_prev;           ///< per ChannelMix layer [B, C]: previous token's ln2 output
  std::vector<aligned_vector<float>> ms;    ///< per Meta-State layer [B, H, n, n]: the Meta-State M (aligned)
  forward_workspace work;

  rwkv7_state() = default;
  rwkv7_state(const rwkv7_config& c, int batch_rows) : config(c), batch(batch_rows) {
    if (batch_rows <= 0) throw shape_error("rwkv7_state: batch must be positive, got " + std::to_string(batch_rows));
    att_x_prev.assign(c.layers, matrix::Zero(batch, c.width));
    att_kv.assign(c.layers, aligned_vector<float>(std::size_t(batch) * c.heads * c.head_size * c.head_size, 0.0f));
    ffn_x_prev.resize(c.layers);
    ms.resize(c.layers);
    for (int l = 0; l < c.layers; ++l) {
      if (c.is_meta_state(l)) ms[l].assign(std::size_t(batch) * c.heads * c.sse_dim * c.sse_dim, 0.0f);
      else ffn_x_prev[l] = matrix::Zero(batch, c.width);
    }
  }

  /// Bytes of recurrent state (the workspace excluded).
  std::size_t bytes() const {
    std::size_t floats = 0;
    for (int l = 0; l < config.layers; ++l)
      floats += att_x_prev[l].size() + att_kv[l].size() + ffn_x_prev[l].size() + ms[l].size();
    return floats * sizeof(float);
  }

  /// Back to the start of a fresh sequence (all zero).
  void reset() {
    for (auto& m : att_x_prev) m.setZero();
    for (auto& m : ffn_x_prev) m.setZero();
    for (auto& s : att_kv) std::fill(s.begin(), s.end(), 0.0f);
    for (auto& m : ms) std::fill(m.begin(), m.end(), 0.0f);
  }
};

namespace detail {

/// The state's tensors with the names `metastate forward` writes: [C] / [H,N,N] for one
/// sequence, with a leading batch axis for several.
template <class State, class F>
void for_each_state_tensor(State& s, F&& f) {
  const auto& c = s.config;
  const std::int64_t B = s.batch, C = c.width, H = c.heads, N = c.head_size, n = c.sse_dim;
  auto shape = [&](std::vector<std::int64_t> inner) {
    if (B > 1) inner.insert(inner.begin(), B);
    return inner;
  };
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = "state." + std::to_string(l) + ".";
    f(p + "att_x_prev", shape({C}), s.att_x_prev[l].data());
    f(p + "att_kv", shape({H, N, N}), s.att_kv[l].data());
    if (c.is_meta_state(l)) f(p + "ms", shape({H, n, n}), s.ms[l].data());
    else f(p + "ffn_x_prev", shape({C}), s.ffn_x_prev[l].data());
  }
}

inline std::string config_string(const rwkv7_config& c, int batch) {
  std::string blocks;
  for (auto b : c.blocks) blocks += b == block_kind::meta_state ? 'M' : 'F';
  return "layers " + std::to_string(c.layers) + ", width " + std::to_string(c.width) + ", heads " +
         std::to_string(c.heads) + ", head size " + std::to_string(c.head_size) + ", batch " + std::to_string(batch) +
         ", blocks " + blocks + (c.has_meta_state() ? ", sse_dim " + std::to_string(c.sse_dim) : "");
}

}  // namespace detail

/// Adds the state's tensors and its shape metadata to a file being written.
inline void add_state(io::safetensors_writer& out, const rwkv7_state& s) {
  detail::for_each_state_tensor(s, [&](const std::string& name, const std::vector<std::int64_t>& shape,
                                       const float* data) { out.add<float>(name, shape, data); });
  out.set_metadata("state_shape", detail::config_string(s.config, s.batch));
}

/// Writes the state to a safetensors file (F32, bit-exact round trip).
inline void save_state(const rwkv7_state& s, const std::string& path) {
  io::safetensors_writer out;
  add_state(out, s);
  out.write(path);
}

/// Reads a state written by `save_state` (or by `metastate forward`) into `s`, refusing a
/// file made for another model shape or batch. All or nothing: a file that fails (a missing
/// or mis-shaped tensor) leaves `s` as it was.
inline void restore_state(rwkv7_state& s, const io::safetensors_file& f) {
  const std::string want = detail::config_string(s.config, s.batch);
  const auto it = f.metadata().find("state_shape");
  if (it == f.metadata().end())
    throw io_error(f.source() + ": not a metastate state file (no 'state_shape' metadata)");
  if (it->second != want)
    throw shape_error(f.source() + ": the state is for a model with " + it->second + ", this one has " + want);
  std::vector<std::vector<float>> read;
  detail::for_each_state_tensor(s, [&](const std::string& name, const std::vector<std::int64_t>& shape, float*) {
    read.push_back(f.read<float>(name, shape));
  });
  std::size_t next = 0;
  detail::for_each_state_tensor(s, [&](const std::string&, const std::vector<std::int64_t>&, float* data) {
    std::copy(read[next].begin(), read[next].end(), data);
    ++next;
  });
}

}  // namespace metastate::model
