// Runs an RWKV-7 model and a Meta-State model of the same size on the same tokens; prints
// prefill and decode throughput and the size of each model's recurrent state.
#include <metastate/metastate.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

namespace mm = metastate::model;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void run(const char* name, const mm::rwkv7_weights& w, const std::vector<std::int64_t>& prompt, int decode_tokens) {
  mm::rwkv7_state state(w.config, 1);
  std::vector<float> logits(w.config.vocab);
  mm::forward_options opt;
  opt.logits = mm::logits_for::last_token;
  auto start = std::chrono::steady_clock::now();
  mm::forward(w, prompt.data(), static_cast<metastate::index_t>(prompt.size()), state, logits.data(), opt);
  const double prefill = prompt.size() / seconds_since(start);

  opt.chunk = 1;
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < decode_tokens; ++i) {  // greedy decoding
    const std::int64_t next = std::max_element(logits.begin(), logits.end()) - logits.begin();
    mm::forward(w, &next, 1, state, logits.data(), opt);
  }
  const double decode = decode_tokens / seconds_since(start);
  std::printf("%-10s  prefill %8.0f tokens/s   decode %6.1f tokens/s   state %7.1f KiB\n", name, prefill, decode,
              state.bytes() / 1024.0);
}

}  // namespace

int main() {
  // Both models: 6 layers, width 512, head size 64, vocabulary 4096; the Meta-State model has a
  // Meta-State layer in place of every ChannelMix layer.
  auto rwkv7_config = mm::make_config(6, 512, 64, 4096);
  auto meta_config = rwkv7_config;
  meta_config.blocks.assign(meta_config.layers, mm::block_kind::meta_state);
  const auto rwkv7 = mm::initialise(rwkv7_config, 1, mm::init_kind::random);
  const auto meta = mm::initialise(meta_config, 1, mm::init_kind::random);

  std::vector<std::int64_t> prompt(1024);
  std::mt19937 gen(7);
  for (auto& t : prompt) t = std::uniform_int_distribution<int>(0, 4095)(gen);
  std::printf("6 layers, width 512, head size 64, 1024-token prompt, 64 decoded tokens\n");
  run("rwkv7", rwkv7, prompt, 64);
  run("meta-state", meta, prompt, 64);
}
