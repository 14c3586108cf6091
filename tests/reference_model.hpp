// Plain fp64 RWKV-7 (x070) forward pass written from SPEC.md §3, with the Meta-State layer of §4, independent
// of the library's model and meta-state code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <metastate/io/safetensors.hpp>

namespace ref_model {

/// Recurrent state, per layer: att_x_prev [C], att_kv [H*N*N] (row = value index), ffn_x_prev [C] (kept at zero
/// and never read in a Meta-State layer; check_state also accepts it empty there), ms [H*n*n] (the Meta-State M
/// per head, row-major, row = value index; empty for ChannelMix layers, and `ms` itself may be left empty
/// altogether for a model without Meta-State layers).
struct state {
  std::vector<std::vector<double>> att_x_prev, att_kv, ffn_x_prev;
  std::vector<std::vector<double>> ms;
};

namespace detail {

using vec = std::vector<double>;
using file = metastate::io::safetensors_file;

/// A row-major matrix exactly as stored in the checkpoint.
struct mat {
  int rows = 0, cols = 0;
  vec d;
  double operator()(int i, int j) const { return d[std::size_t(i) * cols + j]; }
};

[[noreturn]] inline void bad_shape(const std::string& name, const std::string& what) {
  throw std::runtime_error("reference_model: tensor '" + name + "' " + what);
}

/// A vector of X entries stored as [X] or [1,1,X] (any leading 1s).
inline vec load_vec(const file& f, const std::string& name, int x) {
  const auto& shape = f.at(name).shape;
  if (shape.empty() || shape.back() != x || f.at(name).numel() != x)
    bad_shape(name, "should hold a vector of " + std::to_string(x));
  return f.read<double>(name);
}

/// The two extents of a 2-D tensor.
inline std::vector<std::int64_t> dims2(const file& f, const std::string& name) {
  const auto& shape = f.at(name).shape;
  if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0) bad_shape(name, "should be a 2-D matrix");
  return shape;
}

/// A [rows, cols] matrix; rows or cols < 0 means "read it from the shape".
inline mat load_mat(const file& f, const std::string& name, int rows, int cols) {
  const auto shape = dims2(f, name);
  if ((rows >= 0 && shape[0] != rows) || (cols >= 0 && shape[1] != cols))
    bad_shape(name, "should be [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  return mat{int(shape[0]), int(shape[1]), f.read<double>(name)};
}

/// Linear: x @ Wᵀ with W stored [out, in].
inline vec linear(const mat& w, const vec& x) {
  vec y(w.rows, 0.0);
  for (int o = 0; o < w.rows; ++o)
    for (int i = 0; i < w.cols; ++i) y[o] += w(o, i) * x[i];
  return y;
}

/// LoRA factor: x @ W with W stored [in, out].
inline vec lora(const vec& x, const mat& w) {
  vec y(w.cols, 0.0);
  for (int i = 0; i < w.rows; ++i)
    for (int o = 0; o < w.cols; ++o) y[o] += x[i] * w(i, o);
  return y;
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// Normalises each group of `g` consecutive entries (biased variance), then applies the affine.
inline vec group_norm(const vec& x, const vec& w, const vec& b, std::size_t g, double eps) {
  vec y(x.size());
  for (std::size_t s = 0; s < x.size(); s += g) {
    double mean = 0, var = 0;
    for (std::size_t i = s; i < s + g; ++i) mean += x[i];
    mean /= double(g);
    for (std::size_t i = s; i < s + g; ++i) var += (x[i] - mean) * (x[i] - mean);
    var /= double(g);
    for (std::size_t i = s; i < s + g; ++i) y[i] = (x[i] - mean) / std::sqrt(var + eps) * w[i] + b[i];
  }
  return y;
}

/// LayerNorm: eps 1e-5, biased variance, affine (§3).
inline vec layer_norm(const vec& x, const vec& w, const vec& b) { return group_norm(x, w, b, x.size(), 1e-5); }

struct layer {
  vec ln1_w, ln1_b, ln2_w, ln2_b;
  vec x_r, x_w, x_k, x_v, x_a, x_g;  // token-shift mixes [C]
  mat wr, wk, wv, wo;                // receptance/key/value [A,C], output [C,A]
  vec w0, a0, v0;                    // LoRA biases [A]
  mat w1, w2, a1, a2, v1, v2, g1, g2;
  vec k_k, k_a, r_k, lnx_w, lnx_b;   // [A]
  vec ffn_x_k;                       // [C]
  mat ffn_key, ffn_value;            // [F,C], [C,F]
  bool meta_state = false;           // ms.* instead of ffn.* (§4)
  mat ms_out;                        // ms.output.weight [C, H*n]
  mat ms_proj;                       // ms.proj [N, N0]; rows == 0 means P = I (N == N0)
};

/// The transition (w, κ̂, α) of one token in one layer, kept for the Meta-State layer (§4).
struct transition {
  vec w, kap, alpha;  // [A]; a = −κ̂, b = κ̂*α
};

}  // namespace detail

/// The RWKV-7 x070 model in fp64, evaluated token by token with plain loops.
class rwkv7 {
 public:
  explicit rwkv7(const metastate::io::safetensors_file& f) {
    using namespace detail;
    const auto emb_shape = dims2(f, "emb.weight");  // [V, C]
    V_ = int(emb_shape[0]);
    C_ = int(emb_shape[1]);
    emb_ = load_mat(f, "emb.weight", V_, C_);
    while (f.find("blocks." + std::to_string(L_) + ".ln1.weight")) ++L_;
    if (L_ == 0) throw std::runtime_error("reference_model: no blocks.0.ln1.weight");
    const auto rk = dims2(f, "blocks.0.att.r_k");  // [H, N]
    H_ = int(rk[0]);
    N_ = int(rk[1]);
    const int A = H_ * N_;
    G_ = N_;
    const auto& meta = f.metadata();
    if (auto it = meta.find("ln_x_group_size"); it != meta.end()) G_ = std::stoi(it->second);
    if (G_ <= 0 || A % G_ != 0) throw std::runtime_error("reference_model: ln_x_group_size must divide H*N");

    // Meta-State (§4, §6): sse_dim n (default N), validated below only if some layer is a Meta-State layer.
    n_ = N_;
    bool sse_ok = true;
    if (auto it = meta.find("sse_dim"); it != meta.end()) {
      const std::string& t = it->second;
      sse_ok = !t.empty() && t.size() < 10 && t.find_first_not_of("0123456789") == std::string::npos;
      if (sse_ok) n_ = std::stoi(t);
      sse_ok = sse_ok && n_ >= 1 && n_ <= N_;
      if (!sse_ok) n_ = N_;  // ignored (sse_dim() reports N) unless a Meta-State layer needs it
    }

    ln0_w_ = load_vec(f, "blocks.0.ln0.weight", C_);
    ln0_b_ = load_vec(f, "blocks.0.ln0.bias", C_);
    lnout_w_ = load_vec(f, "ln_out.weight", C_);
    lnout_b_ = load_vec(f, "ln_out.bias", C_);
    head_ = load_mat(f, "head.weight", V_, C_);

    for (int l = 0; l < L_; ++l) {
      const std::string p = "blocks." + std::to_string(l) + ".";
      const auto v = [&](const std::string& n, int x) { return load_vec(f, p + n, x); };
      const auto m = [&](const std::string& n, int r, int c) { return load_mat(f, p + n, r, c); };
      layer y;
      y.ln1_w = v("ln1.weight", C_), y.ln1_b = v("ln1.bias", C_);
      y.ln2_w = v("ln2.weight", C_), y.ln2_b = v("ln2.bias", C_);
      y.x_r = v("att.x_r", C_), y.x_w = v("att.x_w", C_), y.x_k = v("att.x_k", C_);
      y.x_v = v("att.x_v", C_), y.x_a = v("att.x_a", C_), y.x_g = v("att.x_g", C_);
      y.wr = m("att.receptance.weight", A, C_), y.wk = m("att.key.weight", A, C_);
      y.wv = m("att.value.weight", A, C_), y.wo = m("att.output.weight", C_, A);
      y.w1 = m("att.w1", C_, -1), y.w2 = m("att.w2", y.w1.cols, A), y.w0 = v("att.w0", A);
      y.a1 = m("att.a1", C_, -1), y.a2 = m("att.a2", y.a1.cols, A), y.a0 = v("att.a0", A);
      if (l > 0) y.v1 = m("att.v1", C_, -1), y.v2 = m("att.v2", y.v1.cols, A), y.v0 = v("att.v0", A);
      y.g1 = m("att.g1", C_, -1), y.g2 = m("att.g2", y.g1.cols, A);
      y.k_k = v("att.k_k", A), y.k_a = v("att.k_a", A);
      y.r_k = m("att.r_k", H_, N_).d;
      y.lnx_w = v("att.ln_x.weight", A), y.lnx_b = v("att.ln_x.bias", A);
      y.meta_state = f.find(p + "ms.output.weight") != nullptr;
      if (!y.meta_state) {
        if (f.find(p + "ms.proj")) bad_shape(p + "ms.proj", "found in a layer without ms.output.weight");
        y.ffn_x_k = v("ffn.x_k", C_);
        y.ffn_key = m("ffn.key.weight", -1, C_), y.ffn_value = m("ffn.value.weight", C_, y.ffn_key.rows);
      } else {
        for (const char* n : {"ffn.x_k", "ffn.key.weight", "ffn.value.weight"})
          if (f.find(p + n)) bad_shape(p + n, "found in a Meta-State layer (it has ms.output.weight)");
        if (!sse_ok) throw std::runtime_error("reference_model: __metadata__ sse_dim must be an integer in [1, N]");
        if (C_ % H_ != 0) bad_shape(p + "ms.output.weight", "needs C divisible by H (N0 = C/H)");
        const int N0 = C_ / H_;
        y.ms_out = m("ms.output.weight", C_, H_ * n_);
        if (f.find(p + "ms.proj")) {
          y.ms_proj = m("ms.proj", N_, N0);
        } else if (N_ != N0) {
          bad_shape(p + "ms.proj", "is missing but the head size N differs from N0 = C/H");
        }
      }
      layers_.push_back(std::move(y));
    }
  }

  int layers() const { return L_; }
  int width() const { return C_; }
  int heads() const { return H_; }
  int head_size() const { return N_; }
  int vocab() const { return V_; }
  /// n of §4: the `sse_dim` metadata, N when absent.
  int sse_dim() const { return n_; }
  /// Whether layer `layer` is a Meta-State layer (has ms.output.weight) rather than a ChannelMix one.
  bool is_meta_state(int layer) const {
    if (layer < 0 || layer >= L_) throw std::out_of_range("reference_model: layer out of range");
    return layers_[layer].meta_state;
  }

  state zero_state() const {
    state s;
    s.att_x_prev.assign(L_, detail::vec(C_, 0.0));
    s.att_kv.assign(L_, detail::vec(std::size_t(H_) * N_ * N_, 0.0));
    s.ffn_x_prev.assign(L_, detail::vec(C_, 0.0));
    s.ms.assign(L_, detail::vec());
    for (int l = 0; l < L_; ++l)
      if (layers_[l].meta_state) s.ms[l].assign(std::size_t(H_) * n_ * n_, 0.0);
    return s;
  }

  /// Runs tokens one at a time from `s` (updated in place); returns logits [T*V] row-major.
  std::vector<double> forward(const std::vector<std::int64_t>& tokens, state& s) const {
    for (const std::int64_t t : tokens)
      if (t < 0 || t >= V_) throw std::out_of_range("reference_model: token " + std::to_string(t) + " out of range");
    check_state(s);
    std::vector<double> logits;
    logits.reserve(tokens.size() * std::size_t(V_));
    for (const std::int64_t t : tokens) {
      const auto y = step(t, s);
      logits.insert(logits.end(), y.begin(), y.end());
    }
    return logits;
  }

 private:
  using vec = detail::vec;

  void check_state(const state& s) const {
    bool ok = int(s.att_x_prev.size()) == L_ && int(s.att_kv.size()) == L_ && int(s.ffn_x_prev.size()) == L_;
    bool any_ms = false;
    for (const auto& y : layers_) any_ms = any_ms || y.meta_state;
    ok = ok && (int(s.ms.size()) == L_ || (s.ms.empty() && !any_ms));
    for (int l = 0; ok && l < L_; ++l) {
      const bool ms = layers_[l].meta_state;
      ok = int(s.att_x_prev[l].size()) == C_ && s.att_kv[l].size() == std::size_t(H_) * N_ * N_ &&
           (int(s.ffn_x_prev[l].size()) == C_ || (ms && s.ffn_x_prev[l].empty())) &&
           (s.ms.empty() || s.ms[l].size() == (ms ? std::size_t(H_) * n_ * n_ : 0));
    }
    if (!ok) throw std::invalid_argument("reference_model: state does not match the model");
  }

  /// One token through the model (§3 "Model").
  vec step(std::int64_t token, state& s) const {
    vec x(emb_.d.begin() + token * C_, emb_.d.begin() + (token + 1) * C_);
    x = detail::layer_norm(x, ln0_w_, ln0_b_);
    vec v_first;
    for (int l = 0; l < L_; ++l) {
      const auto& y = layers_[l];
      detail::transition tr;
      const vec dx = time_mix(l, detail::layer_norm(x, y.ln1_w, y.ln1_b), s, v_first, tr);
      for (int c = 0; c < C_; ++c) x[c] += dx[c];
      const vec z = detail::layer_norm(x, y.ln2_w, y.ln2_b);
      const vec dh = y.meta_state ? meta_state(l, z, s, tr) : channel_mix(l, z, s);
      for (int c = 0; c < C_; ++c) x[c] += dh[c];
    }
    return detail::linear(head_, detail::layer_norm(x, lnout_w_, lnout_b_));
  }

  /// TimeMix for one token, steps 1–11 of SPEC §3.
  /// Leaves s.att_kv[l] = S_t and the token's transition in `tr`.
  vec time_mix(int l, const vec& x, state& s, vec& v_first, detail::transition& tr) const {
    using namespace detail;
    const layer& p = layers_[l];
    const int A = H_ * N_;
    // 1. token shift: x_m = x + (x_prev − x) * mix
    vec xr(C_), xw(C_), xk(C_), xv(C_), xa(C_), xg(C_);
    for (int c = 0; c < C_; ++c) {
      const double xx = s.att_x_prev[l][c] - x[c];
      xr[c] = x[c] + xx * p.x_r[c], xw[c] = x[c] + xx * p.x_w[c], xk[c] = x[c] + xx * p.x_k[c];
      xv[c] = x[c] + xx * p.x_v[c], xa[c] = x[c] + xx * p.x_a[c], xg[c] = x[c] + xx * p.x_g[c];
    }
    s.att_x_prev[l] = x;
    // 2. projections
    const vec r = linear(p.wr, xr);
    vec k = linear(p.wk, xk), v = linear(p.wv, xv);
    // 3. decay w = exp(−e^{−0.5}·σ(w0 + tanh(x_w@w1)@w2))
    vec hw = lora(xw, p.w1);
    for (double& e : hw) e = std::tanh(e);
    vec w = lora(hw, p.w2);
    for (int i = 0; i < A; ++i) w[i] = std::exp(-std::exp(-0.5) * sigmoid(p.w0[i] + w[i]));
    // 4. in-context rate α = σ(a0 + (x_a@a1)@a2)
    vec alpha = lora(lora(xa, p.a1), p.a2);
    for (int i = 0; i < A; ++i) alpha[i] = sigmoid(p.a0[i] + alpha[i]);
    // 5. value residual
    if (l == 0) {
      v_first = v;
    } else {
      const vec mv = lora(lora(xv, p.v1), p.v2);
      for (int i = 0; i < A; ++i) v[i] += (v_first[i] - v[i]) * sigmoid(p.v0[i] + mv[i]);
    }
    // 6. gate g = σ(x_g@g1)@g2
    vec hg = lora(xg, p.g1);
    for (double& e : hg) e = sigmoid(e);
    const vec g = lora(hg, p.g2);
    // 7. removal key κ̂ from the ORIGINAL k (per-head L2), then k = k*(1 + (α−1)*k_a)
    vec kap(A);
    for (int i = 0; i < A; ++i) kap[i] = k[i] * p.k_k[i];
    for (int h = 0; h < H_; ++h) {
      double ss = 0;
      for (int n = 0; n < N_; ++n) ss += kap[h * N_ + n] * kap[h * N_ + n];
      const double norm = std::max(std::sqrt(ss), 1e-12);
      for (int n = 0; n < N_; ++n) kap[h * N_ + n] /= norm;
    }
    for (int i = 0; i < A; ++i) k[i] *= 1.0 + (alpha[i] - 1.0) * p.k_a[i];
    // 8. WKV (§2) per head with a = −κ̂, b = κ̂*α; S row i = value index, column j = key index
    vec y(A, 0.0);
    for (int h = 0; h < H_; ++h) {
      double* S = s.att_kv[l].data() + std::size_t(h) * N_ * N_;
      const int o = h * N_;
      for (int i = 0; i < N_; ++i) {
        double u = 0;  // u = S_{t-1} a, from the OLD row
        for (int j = 0; j < N_; ++j) u += S[i * N_ + j] * -kap[o + j];
        for (int j = 0; j < N_; ++j) {
          double& e = S[i * N_ + j];
          e = e * w[o + j] + u * kap[o + j] * alpha[o + j] + v[o + i] * k[o + j];
          y[o + i] += e * r[o + j];  // readout from the NEW state
        }
      }
    }
    // 9. GroupNorm(ln_x), eps 64e-5, groups of G consecutive channels
    y = group_norm(y, p.lnx_w, p.lnx_b, std::size_t(G_), 64e-5);
    // 10. bonus: y_h += (Σ_n r k r_k) · v_h with the modified k and mixed v
    for (int h = 0; h < H_; ++h) {
      double dot = 0;
      for (int n = 0; n < N_; ++n) dot += r[h * N_ + n] * k[h * N_ + n] * p.r_k[h * N_ + n];
      for (int n = 0; n < N_; ++n) y[h * N_ + n] += dot * v[h * N_ + n];
    }
    // 11. out = (y*g) @ Woᵀ
    for (int i = 0; i < A; ++i) y[i] *= g[i];
    tr.w = std::move(w), tr.kap = std::move(kap), tr.alpha = std::move(alpha);
    return linear(p.wo, y);
  }

  /// Meta-State layer (§4) for one token: z = ln2 output; S_t = s.att_kv[l] after this token's TimeMix; `tr` its
  /// transition. No token shift.
  vec meta_state(int l, const vec& z, state& s, const detail::transition& tr) const {
    const detail::layer& p = layers_[l];
    const int N0 = C_ / H_, n = n_;
    vec o(std::size_t(H_) * n, 0.0);  // concat_h(o^h)
    vec xt(N_), e(n);
    for (int h = 0; h < H_; ++h) {
      // x̃ = P z^h (P = I when not stored, then N == N0)
      for (int i = 0; i < N_; ++i) {
        if (p.ms_proj.rows == 0) {
          xt[i] = z[h * N0 + i];
        } else {
          double acc = 0;
          for (int j = 0; j < N0; ++j) acc += p.ms_proj(i, j) * z[h * N0 + j];
          xt[i] = acc;
        }
      }
      // Self-State Encoder: e = S_t[:n,:n] x̃[:n]
      const double* S = s.att_kv[l].data() + std::size_t(h) * N_ * N_;
      for (int i = 0; i < n; ++i) {
        double acc = 0;
        for (int j = 0; j < n; ++j) acc += S[i * N_ + j] * xt[j];
        e[i] = acc;
      }
      // M_t = M diag(w[:n]) + (M a[:n]) ⊗ b[:n] + e ⊗ e, a = −κ̂, b = κ̂*α; then o^h = M_t x̃[:n]
      double* M = s.ms[l].data() + std::size_t(h) * n * n;
      const int c = h * N_;  // this head's first channel in the transition
      for (int i = 0; i < n; ++i) {
        double u = 0;  // from the OLD row
        for (int j = 0; j < n; ++j) u += M[i * n + j] * -tr.kap[c + j];
        for (int j = 0; j < n; ++j) {
          double& m = M[i * n + j];
          m = m * tr.w[c + j] + u * tr.kap[c + j] * tr.alpha[c + j] + e[i] * e[j];
          o[std::size_t(h) * n + i] += m * xt[j];
        }
      }
    }
    return detail::linear(p.ms_out, o);
  }

  /// ChannelMix: relu((x + (x_prev − x)*x_k) @ keyᵀ)² @ valueᵀ.
  vec channel_mix(int l, const vec& x, state& s) const {
    const detail::layer& p = layers_[l];
    vec xk(C_);
    for (int c = 0; c < C_; ++c) xk[c] = x[c] + (s.ffn_x_prev[l][c] - x[c]) * p.ffn_x_k[c];
    s.ffn_x_prev[l] = x;
    vec h = detail::linear(p.ffn_key, xk);
    for (double& e : h) e = e > 0 ? e * e : 0.0;
    return detail::linear(p.ffn_value, h);
  }

  int L_ = 0, C_ = 0, H_ = 0, N_ = 0, V_ = 0, G_ = 0, n_ = 0;
  detail::mat emb_, head_;
  vec ln0_w_, ln0_b_, lnout_w_, lnout_b_;
  std::vector<detail::layer> layers_;
};

}  // namespace ref_model
