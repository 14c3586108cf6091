// The flagship example: a small Meta-State model reads a text, grows its states mid-stream
// (head size 32 -> 64) without retraining or restarting, and continues; the grown model's
// outputs equal the original's.
#include <metastate/metastate.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace mm = metastate::model;
namespace sc = metastate::scaling;

namespace {

const char* text =
    "The Meta-State layer uses the layer's own recurrent state as the weights of a Self-State Encoder, "
    "runs a second recurrence on what that encoder writes, and reads it out through one projection. "
    "Because the new key rows and output columns of a grown model start at zero, the model can grow "
    "its states mid-sentence and carry on exactly where it was, then learn to use the extra room.";

std::vector<float> run(const mm::rwkv7_weights& w, const std::vector<std::int64_t>& tokens, mm::rwkv7_state& s,
                       double& tokens_per_second) {
  std::vector<float> logits(tokens.size() * w.config.vocab);
  const auto start = std::chrono::steady_clock::now();
  mm::forward(w, tokens.data(), static_cast<metastate::index_t>(tokens.size()), s, logits.data());
  tokens_per_second = tokens.size() / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return logits;
}

double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff += double(a[i] - b[i]) * (a[i] - b[i]), norm += double(b[i]) * b[i];
  return std::sqrt(diff / norm);
}

}  // namespace

int main() {
  // 2 Meta-State layers, width 256, 8 heads of 32, byte vocabulary.
  auto config = mm::make_config(2, 256, 32, 256);
  config.blocks.assign(config.layers, mm::block_kind::meta_state);
  auto model = mm::initialise(config, 42, mm::init_kind::random);

  std::vector<std::int64_t> bytes;
  for (const char* c = text; *c; ++c) bytes.push_back(static_cast<unsigned char>(*c));
  const std::size_t half = bytes.size() / 2;
  const std::vector<std::int64_t> first(bytes.begin(), bytes.begin() + half), second(bytes.begin() + half, bytes.end());

  mm::rwkv7_state state(model.config, 1);
  double speed = 0;
  run(model, first, state, speed);
  std::printf("read %zu bytes with head size %d: %.0f tokens/s, state %.1f KiB\n", first.size(),
              model.config.head_size, speed, state.bytes() / 1024.0);

  // Grow mid-stream: weights and the live state together.
  const auto grown = sc::grow(model, {64, 0, 7, 0.0});
  auto grown_state = sc::grow_state(state, grown.config);
  std::printf("grew to head size %d (sse_dim %d): state %.1f KiB\n", grown.config.head_size, grown.config.sse_dim,
              grown_state.bytes() / 1024.0);

  double original_speed = 0, grown_speed = 0;
  const auto expected = run(model, second, state, original_speed);
  const auto got = run(grown, second, grown_state, grown_speed);
  std::printf("continued %zu bytes: original %.0f tokens/s, grown %.0f tokens/s\n", second.size(), original_speed,
              grown_speed);
  const double difference = relative_difference(got, expected);
  std::printf("logits after growth vs without growth: RMS-relative difference %.2e (%s)\n", difference,
              difference <= 1e-6 ? "agree" : "DIFFER");
  return difference <= 1e-6 ? 0 : 1;
}
