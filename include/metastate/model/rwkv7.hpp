// The RWKV-7 (x070) model forward pass (SPEC §3), with Meta-State layers in place of ChannelMix where the checkpoint has them (SPEC §4).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>

#include "metastate/core/error.hpp"
#include "metastate/core/parallel.hpp"
#include "metastate/meta_state/meta_state.hpp"
#include "metastate/model/state.hpp"
#include "metastate/model/weights.hpp"
#include "metastate/wkv/wkv7.hpp"

namespace metastate::model {

/// Which logits `forward` writes.
enum class logits_for {
  all_tokens,  ///< [B, T, V]
  last_token,  ///< [B, V]
  none,
};

struct forward_options {
  exec_policy exec{};
  /// Tokens per chunk: the projections run as matrix products over B x chunk rows, and the
  /// working memory is O(B x chunk x width), independent of T. `chunk = 1` is decoding.
  int chunk = 128;
  logits_for logits = logits_for::all_tokens;
};

namespace detail {

inline void layer_norm(const matrix& in, matrix& out, const row_vector& weight, const row_vector& bias, float eps) {
  out.resize(in.rows(), in.cols());
  for (Eigen::Index i = 0; i < in.rows(); ++i) {
    const float mean = in.row(i).mean();
    const float var = (in.row(i).array() - mean).square().mean();  // biased, as torch
    out.row(i) = ((in.row(i).array() - mean) / std::sqrt(var + eps)) * weight.array() + bias.array();
  }
}

/// Normalises each group of `group` consecutive channels of every row (GroupNorm, no affine).
inline void group_norm(matrix& y, int group, float eps) {
  Eigen::Map<matrix> groups(y.data(), y.size() / group, group);
  for (Eigen::Index i = 0; i < groups.rows(); ++i) {
    auto g = groups.row(i).array();
    g -= g.mean();
    g *= 1.0f / std::sqrt(g.square().mean() + eps);  // biased variance
  }
}

template <class X>
auto sigmoid(const X& x) {
  return (1.0f + (-x).exp()).inverse();
}

/// prev[b*T + t] = xn[b*T + t - 1], or the carried row for t = 0; then carries the last row.
inline void token_shift(const matrix& xn, matrix& carried, int batch, int tokens, matrix& prev) {
  prev.resize(xn.rows(), xn.cols());
  for (int b = 0; b < batch; ++b) {
    const int row = b * tokens;
    prev.row(row) = carried.row(b);
    if (tokens > 1) prev.middleRows(row + 1, tokens - 1) = xn.middleRows(row, tokens - 1);
    carried.row(b) = xn.row(row + tokens - 1);
  }
}

inline void run_wkv(const rwkv7_config& c, forward_workspace& ws, aligned_vector<float>& kv, int batch, int tokens,
                    const exec_policy& exec, wkv7::record<float>* record) {
  const int H = c.heads, N = c.head_size;
  auto view = [&](const matrix& m) { return sequence_view<const float>(m.data(), batch, tokens, H, N); };
  const wkv7::inputs<float> in{view(ws.r), view(ws.w), view(ws.k), view(ws.v), view(ws.a), view(ws.b)};
  ws.y.resize(ws.r.rows(), ws.r.cols());
  const state_view<float> state(kv.data(), batch, H, N);
  const sequence_view<float> y(ws.y.data(), batch, tokens, H, N);
  wkv7::options opt;
  opt.exec = exec;
  auto run = [&](auto&... saved) {  // with the record, if any
    if (N == 64)  // the released head size gets the unrolled kernel
      wkv7::sequence<64>(in, state, y, opt, saved...);
    else
      wkv7::sequence(in, state, y, opt, saved...);
  };
  if (record)
    run(*record);
  else
    run();
}

/// TimeMix over the rows of one chunk (SPEC §3 steps 1–11); adds its output to ws.x.
inline void time_mix(const rwkv7_config& c, const layer_weights& lw, int layer, rwkv7_state& s, int batch,
                     int tokens, const exec_policy& exec) {
  auto& ws = s.work;
  const auto& p = lw.att;
  const int H = c.heads, N = c.head_size;
  const Eigen::Index M = ws.x.rows();
  layer_norm(ws.x, ws.xn, lw.ln1_weight, lw.ln1_bias, 1e-5f);
  token_shift(ws.xn, s.att_x_prev[layer], batch, tokens, ws.prev);
  ws.prev -= ws.xn;  // xx = x_{t-1} - x_t
  auto mixed = [&](const row_vector& m) -> const matrix& {
    ws.mix = ws.xn + (ws.prev.array().rowwise() * m.array()).matrix();
    return ws.mix;
  };
  ws.r.noalias() = mixed(p.x_r) * p.receptance.transpose();
  ws.lora_w.noalias() = mixed(p.x_w) * p.w1;
  ws.lora_w = ws.lora_w.array().tanh();
  ws.w.noalias() = ws.lora_w * p.w2;
  ws.w.rowwise() += p.w0;
  ws.w = (sigmoid(ws.w.array()) * -std::exp(-0.5f)).exp();  // w = exp(-e^{-1/2} σ(d))
  ws.k.noalias() = mixed(p.x_k) * p.key.transpose();
  ws.v.noalias() = mixed(p.x_v) * p.value.transpose();
  if (layer == 0) {
    ws.v_first = ws.v;
  } else {  // value residual; the mix still holds x_v
    ws.lora_v.noalias() = ws.mix * p.v1;
    ws.y.noalias() = ws.lora_v * p.v2;
    ws.y.rowwise() += p.v0;
    ws.v.array() += (ws.v_first - ws.v).array() * sigmoid(ws.y.array());
  }
  ws.lora_a.noalias() = mixed(p.x_a) * p.a1;
  ws.a.noalias() = ws.lora_a * p.a2;
  ws.a.rowwise() += p.a0;
  ws.a = sigmoid(ws.a.array());  // α, the in-context rate
  ws.lora_g.noalias() = mixed(p.x_g) * p.g1;
  ws.lora_g = sigmoid(ws.lora_g.array());
  ws.g.noalias() = ws.lora_g * p.g2;

  // Removal key κ̂ from the ORIGINAL k, normalised per head; then k is modified.
  ws.b = ws.k.array().rowwise() * p.k_k.array();
  {
    Eigen::Map<matrix> heads(ws.b.data(), M * H, N);
    for (Eigen::Index i = 0; i < heads.rows(); ++i) heads.row(i) /= std::max(heads.row(i).norm(), 1e-12f);
  }
  ws.k.array() *= 1.0f + ((ws.a.array() - 1.0f).rowwise() * p.k_a.array());
  ws.y = ws.b.cwiseProduct(ws.a);  // b = κ̂ α
  ws.a = -ws.b;                    // a = -κ̂
  ws.b.swap(ws.y);

  // A Meta-State layer's encoder needs S_t of every token of the chunk (SPEC §4): the op
  // records what the encoder rebuilds them from.
  const bool recorded = c.is_meta_state(layer) && tokens > 1;
  run_wkv(c, ws, s.att_kv[layer], batch, tokens, exec, recorded ? &ws.kv_record : nullptr);

  group_norm(ws.y, c.group_size, 64e-5f);
  ws.y = (ws.y.array().rowwise() * p.ln_x_weight.array()).rowwise() + p.ln_x_bias.array();
  {  // bonus: y_h += (Σ_n r k r_k) v_h, per head
    ws.mix = ws.r.cwiseProduct(ws.k);
    ws.mix.array().rowwise() *= Eigen::Map<const row_vector>(p.r_k.data(), H * N).array();
    Eigen::Map<matrix> rk(ws.mix.data(), M * H, N), y(ws.y.data(), M * H, N);
    const Eigen::Map<const matrix> v(ws.v.data(), M * H, N);
    for (Eigen::Index i = 0; i < y.rows(); ++i) y.row(i) += rk.row(i).sum() * v.row(i);
  }
  ws.y.array() *= ws.g.array();
  ws.x.noalias() += ws.y * p.output.transpose();
}

/// ChannelMix over the rows of one chunk; adds its output to ws.x.
inline void channel_mix(const layer_weights& lw, int layer, rwkv7_state& s, int batch, int tokens) {
  auto& ws = s.work;
  layer_norm(ws.x, ws.xn, lw.ln2_weight, lw.ln2_bias, 1e-5f);
  token_shift(ws.xn, s.ffn_x_prev[layer], batch, tokens, ws.prev);
  ws.mix = ws.xn + ((ws.prev - ws.xn).array().rowwise() * lw.ffn.x_k.array()).matrix();
  ws.ffn.noalias() = ws.mix * lw.ffn.key.transpose();
  ws.ffn = ws.ffn.array().max(0.0f).square();
  ws.x.noalias() += ws.ffn * lw.ffn.value.transpose();
}

/// The Meta-State layer over the rows of one chunk (SPEC §4), after time_mix left the
/// chunk's transition (ws.w, ws.a, ws.b) and keys (ws.k, ws.v) in the workspace; adds its
/// output to ws.x.
inline void meta_state_layer(const rwkv7_config& c, const layer_weights& lw, int layer, rwkv7_state& s, int batch,
                             int tokens, const exec_policy& exec) {
  auto& ws = s.work;
  const int H = c.heads, N = c.head_size, N0 = c.input_head_size(), n = c.sse_dim;
  const Eigen::Index M = ws.x.rows();
  layer_norm(ws.x, ws.xn, lw.ln2_weight, lw.ln2_bias, 1e-5f);  // z
  if (c.projection) {  // x̃ = P z per head
    const Eigen::Map<const matrix> z(ws.xn.data(), M * H, N0);
    ws.mix.resize(M, H * N);
    Eigen::Map<matrix>(ws.mix.data(), M * H, N).noalias() = z * lw.ms.proj.transpose();
  } else {
    ws.mix = ws.xn;
  }
  auto view = [&](const matrix& m, int size) { return sequence_view<const float>(m.data(), batch, tokens, H, size); };
  ws.readout.resize(M, H * n);
  const sequence_view<float> o(ws.readout.data(), batch, tokens, H, n);
  const state_view<float> m(s.ms[layer].data(), batch, H, n);
  wkv7::options opt;
  opt.exec = exec;
  if (tokens == 1) {  // S_t is the state TimeMix just left
    ws.encoded.resize(M, H * n);
    const sequence_view<float> e(ws.encoded.data(), batch, tokens, H, n);
    meta_state::encode(state_view<const float>(s.att_kv[layer].data(), batch, H, N), view(ws.mix, N), e, n);
    const sequence_view<const float> encoded = e;
    if (n == 64)
      meta_state::evolve<64>(view(ws.w, N), view(ws.a, N), view(ws.b, N), encoded, view(ws.mix, N), m, o, ws.ms, opt);
    else
      meta_state::evolve(view(ws.w, N), view(ws.a, N), view(ws.b, N), encoded, view(ws.mix, N), m, o, ws.ms, opt);
  } else {  // the encoder from what TimeMix recorded, and the evolution sharing its transition work
    const wkv7::inputs<float> wkv{view(ws.r, N), view(ws.w, N), view(ws.k, N), view(ws.v, N), view(ws.a, N),
                                  view(ws.b, N)};
    meta_state::evolve_recorded(wkv, ws.kv_record, view(ws.mix, N), m, o, n, ws.ms, opt);
  }
  ws.x.noalias() += ws.readout * lw.ms.output.transpose();
}

/// The sizes a state depends on (compared field by field: this runs once per decoded token).
inline bool same_shape(const rwkv7_config& a, const rwkv7_config& b) {
  return a.layers == b.layers && a.width == b.width && a.heads == b.heads && a.head_size == b.head_size &&
         a.blocks == b.blocks && (!a.has_meta_state() || a.sse_dim == b.sse_dim);
}

/// Runs the calling thread's OpenMP regions, Eigen's matrix products among them, on
/// `threads` threads for the duration of a call. Eigen takes its thread count from the
/// calling thread's OpenMP setting (unless the program fixed one with Eigen::setNbThreads),
/// so that setting is changed and restored: calls on other threads keep theirs
/// (Eigen::setNbThreads is one value for the whole process, which concurrent calls raced on).
class gemm_threads {
 public:
  explicit gemm_threads(int threads) {
#if METASTATE_HAS_OPENMP
    saved_ = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
  }
  ~gemm_threads() {
#if METASTATE_HAS_OPENMP
    omp_set_num_threads(saved_);
#endif
  }
  gemm_threads(const gemm_threads&) = delete;
  gemm_threads& operator=(const gemm_threads&) = delete;

 private:
  int saved_ = 1;
};

}  // namespace detail

/// Runs `tokens` ([B, T] row-major, B = state.batch) through the model from `state`, which
/// is updated. Writes logits as `opt.logits` asks (row-major, F32).
/// Throws shape_error if the state was made for another model, value_error for a token
/// outside [0, V), a negative T, a null `tokens`, a null `logits` when `opt.logits` asks for
/// logits, or `logits_for::last_token` with no token.
inline void forward(const rwkv7_weights& w, const std::int64_t* tokens, index_t T, rwkv7_state& state,
                    float* logits, const forward_options& opt = {}) {
  const auto& c = w.config;
  if (!detail::same_shape(c, state.config))
    throw shape_error("rwkv7 forward: the state is for a model with " +
                      detail::config_string(state.config, state.batch) + ", this model has " +
                      detail::config_string(c, state.batch));
  if (opt.chunk <= 0) throw value_error("rwkv7 forward: chunk must be positive");
  if (T < 0) throw value_error("rwkv7 forward: the token count must be >= 0, got " + std::to_string(T));
  if (T > 0 && tokens == nullptr) throw value_error("rwkv7 forward: 'tokens' is null");
  if (opt.logits != logits_for::none && logits == nullptr)
    throw value_error("rwkv7 forward: 'logits' is null, but opt.logits asks for logits (logits_for::none skips them)");
  if (opt.logits == logits_for::last_token && T == 0)
    throw value_error("rwkv7 forward: logits_for::last_token needs at least one token");
  const int B = state.batch;
  for (index_t i = 0; i < B * T; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.vocab)
      throw value_error("rwkv7 forward: token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                        " is outside the vocabulary [0, " + std::to_string(c.vocab) + ")");
  detail::gemm_threads threads(resolve_threads(opt.exec));
  auto& ws = state.work;
  for (index_t t0 = 0; t0 < T; t0 += opt.chunk) {
    const int Tc = static_cast<int>(std::min<index_t>(opt.chunk, T - t0));
    ws.x.resize(B * Tc, c.width);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < Tc; ++t) ws.x.row(b * Tc + t) = w.emb.row(tokens[b * T + t0 + t]);
    detail::layer_norm(ws.x, ws.xn, w.ln0_weight, w.ln0_bias, 1e-5f);
    ws.x.swap(ws.xn);
    for (int l = 0; l < c.layers; ++l) {
      detail::time_mix(c, w.layers[l], l, state, B, Tc, opt.exec);
      if (c.is_meta_state(l)) detail::meta_state_layer(c, w.layers[l], l, state, B, Tc, opt.exec);
      else detail::channel_mix(w.layers[l], l, state, B, Tc);
    }
    const bool last_chunk = t0 + Tc == T;
    if (opt.logits == logits_for::all_tokens) {
      detail::layer_norm(ws.x, ws.xn, w.ln_out_weight, w.ln_out_bias, 1e-5f);
      for (int b = 0; b < B; ++b) {
        Eigen::Map<matrix> out(logits + (b * T + t0) * c.vocab, Tc, c.vocab);
        out.noalias() = ws.xn.middleRows(b * Tc, Tc) * w.head.transpose();
      }
    } else if (opt.logits == logits_for::last_token && last_chunk) {
      for (int b = 0; b < B; ++b) {
        ws.prev = ws.x.row(b * Tc + Tc - 1);
        detail::layer_norm(ws.prev, ws.mix, w.ln_out_weight, w.ln_out_bias, 1e-5f);
        Eigen::Map<row_vector> out(logits + index_t(b) * c.vocab, c.vocab);
        out.noalias() = ws.mix * w.head.transpose();
      }
    }
  }
}

}  // namespace metastate::model
