// Plain fp64 RWKV-7 (x070) forward pass written from SPEC.md §3, independent of the library's model code.
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

/// Recurrent state, per layer: att_x_prev [C], att_kv [H*N*N] (row = value index), ffn_x_prev [C].
struct state {
  std::vector<std::vector<double>> att_x_prev, att_kv, ffn_x_prev;
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
      y.ffn_x_k = v("ffn.x_k", C_);
      y.ffn_key = m("ffn.key.weight", -1, C_), y.ffn_value = m("ffn.value.weight", C_, y.ffn_key.rows);
      layers_.push_back(std::move(y));
    }
  }

  int layers() const { return L_; }
  int width() const { return C_; }
  int heads() const { return H_; }
  int head_size() const { return N_; }
  int vocab() const { return V_; }

  state zero_state() const {
    state s;
    s.att_x_prev.assign(L_, detail::vec(C_, 0.0));
    s.att_kv.assign(L_, detail::vec(std::size_t(H_) * N_ * N_, 0.0));
    s.ffn_x_prev.assign(L_, detail::vec(C_, 0.0));
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
    for (int l = 0; ok && l < L_; ++l)
      ok = int(s.att_x_prev[l].size()) == C_ && int(s.ffn_x_prev[l].size()) == C_ &&
           s.att_kv[l].size() == std::size_t(H_) * N_ * N_;
    if (!ok) throw std::invalid_argument("reference_model: state does not match the model");
  }

  /// One token through the model (§3 "Model").
  vec step(std::int64_t token, state& s) const {
    vec x(emb_.d.begin() + token * C_, emb_.d.begin() + (token + 1) * C_);
    x = detail::layer_norm(x, ln0_w_, ln0_b_);
    vec v_first;
    for (int l = 0; l < L_; ++l) {
      const auto& y = layers_[l];
      const vec dx = time_mix(l, detail::layer_norm(x, y.ln1_w, y.ln1_b), s, v_first);
      for (int c = 0; c < C_; ++c) x[c] += dx[c];
      const vec dh = channel_mix(l, detail::layer_norm(x, y.ln2_w, y.ln2_b), s);
      for (int c = 0; c < C_; ++c) x[c] += dh[c];
    }
    return detail::linear(head_, detail::layer_norm(x, lnout_w_, lnout_b_));
  }

  /// TimeMix for one token, steps 1–11 of SPEC §3.
  vec time_mix(int l, const vec& x, state& s, vec& v_first) const {
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
    return linear(p.wo, y);
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

  int L_ = 0, C_ = 0, H_ = 0, N_ = 0, V_ = 0, G_ = 0;
  detail::mat emb_, head_;
  vec ln0_w_, ln0_b_, lnout_w_, lnout_b_;
  std::vector<detail::layer> layers_;
};

}  // namespace ref_model
