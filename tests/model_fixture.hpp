// Random RWKV-7 checkpoints on disk, shared by the model and CLI tests.
#pragma once

#include <metastate/model/rwkv7.hpp>

#include <filesystem>
#include <random>
#include <string>
#include <unistd.h>

namespace fixture {

namespace fs = std::filesystem;

/// A temporary directory removed at scope exit.
struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& tag)
      : path(fs::temp_directory_path() / ("metastate_" + tag + "_" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

/// A small config with custom ranks, FFN width, group size and attention width; every
/// layer a ChannelMix layer unless `blocks` says otherwise ("FMF": F ChannelMix, M Meta-State).
inline metastate::model::rwkv7_config small_config(int layers, int width, int heads, int head_size, int vocab,
                                                   int group_size = 0, const std::string& blocks = "",
                                                   int sse_dim = 0) {
  metastate::model::rwkv7_config c;
  for (int l = 0; l < layers; ++l)
    c.blocks.push_back(l < int(blocks.size()) && blocks[l] == 'M' ? metastate::model::block_kind::meta_state
                                                                  : metastate::model::block_kind::channel_mix);
  c.sse_dim = sse_dim ? sse_dim : head_size;
  c.projection = c.has_meta_state() && head_size != width / heads;
  c.layers = layers, c.width = width, c.heads = heads, c.head_size = head_size, c.vocab = vocab;
  c.ffn_width = 2 * width + 8;
  c.group_size = group_size ? group_size : head_size;
  c.decay_rank = 8, c.icl_rank = 12, c.value_rank = 4, c.gate_rank = 16;
  return c;
}

inline std::vector<std::int64_t> random_tokens(int count, int vocab, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<std::int64_t> t(count);
  for (auto& x : t) x = std::uniform_int_distribution<std::int64_t>(0, vocab - 1)(gen);
  return t;
}

/// Runs `tokens` ([B, T] row-major, B = s.batch) in chunks of `chunk`; returns all logits.
inline std::vector<float> run(const metastate::model::rwkv7_weights& w, const std::vector<std::int64_t>& tokens,
                              metastate::model::rwkv7_state& s, int chunk) {
  std::vector<float> logits(tokens.size() * w.config.vocab);
  metastate::model::forward_options opt;
  opt.chunk = chunk;
  metastate::model::forward(w, tokens.data(), static_cast<metastate::index_t>(tokens.size()) / s.batch, s,
                            logits.data(), opt);
  return logits;
}

/// Per-layer buffers (a state's att_kv or ms, a reference's) laid end to end.
template <class X, class Allocator>
std::vector<X> flatten(const std::vector<std::vector<X, Allocator>>& layers) {
  std::vector<X> out;
  for (const auto& layer : layers) out.insert(out.end(), layer.begin(), layer.end());
  return out;
}

}  // namespace fixture
