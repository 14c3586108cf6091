// Exact progressive growth (SPEC §5): more heads or a larger head size, for weights and live states,
// and the original/new mask of every parameter.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "metastate/core/error.hpp"
#include "metastate/model/state.hpp"
#include "metastate/model/weights.hpp"

namespace metastate::scaling {

/// What to grow to; 0 keeps a size.
struct growth {
  int head_size = 0;  ///< N' ≥ N, a multiple of the GroupNorm group size (which stays)
  int heads = 0;      ///< H' ≥ H, only for models whose layers are all ChannelMix layers
  std::uint64_t seed = 0;
  /// Standard deviation of the new columns of the Meta-State output W_o: 0 keeps growth
  /// exact (SPEC §5); the paper's small random values break exactness.
  double meta_state_output_std = 0.0;
};

namespace detail {

using model::rwkv7_config;

/// How a parameter's flat entries map between sizes: along the attention axis (head h,
/// channel j), the Meta-State output axis (head h, channel j < n), or P's rows.
enum class axis { none, attention_rows, attention_cols, attention_flat, meta_cols, proj_rows };

inline axis axis_of(const std::string& name) {
  auto ends = [&](const char* suffix) {
    const std::string s(suffix);
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  if (ends("att.receptance.weight") || ends("att.key.weight") || ends("att.value.weight")) return axis::attention_rows;
  if (ends("att.output.weight") || ends("att.w2") || ends("att.a2") || ends("att.v2") || ends("att.g2"))
    return axis::attention_cols;
  if (ends("att.w0") || ends("att.a0") || ends("att.v0") || ends("att.k_k") || ends("att.k_a") || ends("att.r_k") ||
      ends("att.ln_x.weight") || ends("att.ln_x.bias"))
    return axis::attention_flat;
  if (ends("ms.output.weight")) return axis::meta_cols;
  if (ends("ms.proj")) return axis::proj_rows;
  return axis::none;
}

/// The index of channel `i` of a per-head axis in a layout with `from` channels per head,
/// or -1 if it is new (a new head, or a channel beyond `from`).
inline std::int64_t per_head(std::int64_t i, int to, int from, int from_heads) {
  const std::int64_t h = i / to, j = i % to;
  return h < from_heads && j < from ? h * from + j : -1;
}

/// For entry `i` (flat, row-major) of parameter `name` shaped for `to`, its flat index in the
/// same parameter shaped for `from`, or -1 if the entry is new. `from` describes a model
/// this one grew from (smaller or equal in every size).
inline std::int64_t source_index(const std::string& name, const std::vector<std::int64_t>& shape, std::int64_t i,
                                 const rwkv7_config& to, int from_heads, int from_n, int from_sse, bool from_proj) {
  const std::int64_t cols = shape.back(), r = i / cols, c = i % cols;
  switch (axis_of(name)) {
    case axis::none:
      return i;
    case axis::attention_rows: {
      const auto src = per_head(r, to.head_size, from_n, from_heads);
      return src < 0 ? -1 : src * cols + c;
    }
    case axis::attention_cols: {
      const auto src = per_head(c, to.head_size, from_n, from_heads);
      return src < 0 ? -1 : r * std::int64_t(from_heads) * from_n + src;
    }
    case axis::attention_flat:
      return per_head(i, to.head_size, from_n, from_heads);
    case axis::meta_cols: {
      const auto src = per_head(c, to.sse_dim, from_sse, from_heads);
      return src < 0 ? -1 : r * std::int64_t(from_heads) * from_sse + src;
    }
    case axis::proj_rows:
      return from_proj && r < from_n ? r * cols + c : -1;  // without a P before, all of P is new
  }
  return -1;
}

}  // namespace detail

/// The sizes after a growth request, or shape_error for a request SPEC §5 does not allow.
inline model::rwkv7_config grown_config(const model::rwkv7_config& c, const growth& g) {
  model::rwkv7_config out = c;
  const int N = g.head_size ? g.head_size : c.head_size, H = g.heads ? g.heads : c.heads;
  if (N < c.head_size || H < c.heads)
    throw shape_error("grow: cannot shrink (head size " + std::to_string(c.head_size) + " -> " + std::to_string(N) +
                      ", heads " + std::to_string(c.heads) + " -> " + std::to_string(H) + ")");
  if (N % c.group_size != 0)
    throw shape_error("grow: head size " + std::to_string(N) + " is not a multiple of the GroupNorm group size " +
                      std::to_string(c.group_size) + ", which must stay fixed for growth to be exact");
  if (H != c.heads && c.has_meta_state())
    throw shape_error("grow: cannot add heads to a model with Meta-State layers (a Meta-State layer splits its "
                      "input into exactly H slices); grow the head size instead");
  out.head_size = N, out.heads = H;
  if (c.has_meta_state()) {
    if (c.sse_dim == c.head_size) out.sse_dim = N;  // an sse_dim equal to N follows it; a smaller one stays
    out.projection = c.projection || N != c.input_head_size();
  }
  return out;
}

/// The grown weights: function-preserving at the moment of growth (SPEC §5). Zero: the new
/// key rows of existing heads, new TimeMix output columns, new P rows (P starts as [I; 0]),
/// new W_o columns (unless `meta_state_output_std`); normal with the RMS of the tensor's
/// original entries: everything else that is new (a new head's key rows among them).
inline model::rwkv7_weights grow(model::rwkv7_weights& w, const growth& g) {
  const auto& from = w.config;
  if (!(std::isfinite(g.meta_state_output_std) && g.meta_state_output_std >= 0))
    throw value_error("grow: meta_state_output_std must be finite and >= 0, got " +
                      std::to_string(g.meta_state_output_std));
  model::rwkv7_weights out;
  out.config = grown_config(from, g);
  model::detail::allocate(out);
  std::mt19937_64 gen(g.seed);
  auto old_params = model::parameters(w);
  auto new_params = model::parameters(out);
  for (std::size_t p = 0; p < new_params.size(); ++p) {
    auto& dst = new_params[p];
    const model::detail::parameter* src = nullptr;
    for (auto& q : old_params)
      if (q.name == dst.name) src = &q;
    double rms = 0;
    if (src && src->size() > 0) {
      for (std::int64_t i = 0; i < src->size(); ++i) rms += double(src->data[i]) * src->data[i];
      rms = std::sqrt(rms / double(src->size()));
    }
    const auto kind = detail::axis_of(dst.name);
    const bool key = dst.name.find("att.key.weight") != std::string::npos,
               zero_new = dst.name.find("att.output.weight") != std::string::npos || kind == detail::axis::proj_rows;
    // σ · z rather than a distribution of σ: σ is 0 for the default W_o columns and for
    // all-zero tensors, where std::normal_distribution is undefined. Every new entry draws
    // its z, as before.
    const float sigma = float(kind == detail::axis::meta_cols ? g.meta_state_output_std : rms);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (std::int64_t i = 0; i < dst.size(); ++i) {
      const auto s = src ? detail::source_index(dst.name, dst.shape, i, out.config, from.heads, from.head_size,
                                                from.sse_dim, from.projection)
                         : -1;
      if (s >= 0) dst.data[i] = src->data[s];
      else if (kind == detail::axis::proj_rows) {  // P = [I; 0] where the model had no P
        const std::int64_t r = i / dst.shape.back(), c = i % dst.shape.back();
        dst.data[i] = !from.projection && r == c ? 1.0f : 0.0f;
      } else {
        // New key rows of an existing head are zero (its κ̂, old state columns and bonus
        // stay as they were); a new head's are drawn like the rest (SPEC §5).
        const bool zero = zero_new || (key && i / dst.shape.back() / out.config.head_size < from.heads);
        dst.data[i] = zero ? 0.0f : sigma * normal(gen);
      }
    }
  }
  return out;
}

/// Grows a live state to `to` (from grown_config of its model): S' = [[S, 0], [0, 0]] and
/// M' likewise per head, new heads zero; the token-shift rows are unchanged.
inline model::rwkv7_state grow_state(const model::rwkv7_state& s, const model::rwkv7_config& to) {
  const auto& from = s.config;
  if (!(to.layers == from.layers && to.width == from.width && to.blocks == from.blocks && to.heads >= from.heads &&
        to.head_size >= from.head_size && to.sse_dim >= from.sse_dim))
    throw shape_error("grow_state: cannot grow a state of a model with " + model::detail::config_string(from, s.batch) +
                      " to one with " + model::detail::config_string(to, s.batch) +
                      " (layers, width and blocks must match; heads, head size and sse_dim cannot shrink)");
  model::rwkv7_state out(to, s.batch);
  auto pad = [&](const aligned_vector<float>& src, aligned_vector<float>& dst, int n_from, int n_to) {
    for (int b = 0; b < s.batch; ++b)
      for (int h = 0; h < from.heads; ++h)
        for (int i = 0; i < n_from; ++i)
          std::copy_n(src.data() + ((std::size_t(b) * from.heads + h) * n_from + i) * n_from, n_from,
                      dst.data() + ((std::size_t(b) * to.heads + h) * n_to + i) * n_to);
  };
  for (int l = 0; l < from.layers; ++l) {
    out.att_x_prev[l] = s.att_x_prev[l];
    out.ffn_x_prev[l] = s.ffn_x_prev[l];
    pad(s.att_kv[l], out.att_kv[l], from.head_size, to.head_size);
    if (from.is_meta_state(l)) pad(s.ms[l], out.ms[l], from.sse_dim, to.sse_dim);
  }
  return out;
}

/// 1 for the entries of parameter `name` that existed before the model's first growth,
/// 0 for the new ones (flat, row-major): what a trainer freezes or slows down.
inline std::vector<std::uint8_t> original_mask(model::rwkv7_weights& w, const std::string& name) {
  const auto& c = w.config;
  for (auto& p : model::parameters(w))
    if (p.name == name) {
      std::vector<std::uint8_t> mask(static_cast<std::size_t>(p.size()));
      for (std::int64_t i = 0; i < p.size(); ++i)
        mask[i] = detail::source_index(name, p.shape, i, c, c.original_heads, c.original_head_size,
                                       c.original_sse_dim, c.original_projection) >= 0;
      return mask;
    }
  throw shape_error("original_mask: the model has no parameter '" + name + "'");
}

}  // namespace metastate::scaling
