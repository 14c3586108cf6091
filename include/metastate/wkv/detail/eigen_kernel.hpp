// WKV-7 `eigen` backend: the fused lazy Eigen expression (the generic path and test oracle).
#pragma once
#include "metastate/detail/internal_header_check.hpp"

#include <Eigen/Core>
#include <algorithm>

#include "metastate/wkv/detail/driver.hpp"

namespace metastate::wkv7::detail {

template <class T, class A, int N>
class eigen_unit {
  static constexpr int Extent = N == dynamic ? Eigen::Dynamic : N;
  using vector = Eigen::Matrix<A, Extent, 1>;
  using key_map = Eigen::Map<const vector>;

 public:
  eigen_unit(const problem<T, A>& p, const unit& u, A* /*scratch: none*/)
      : p_(p), u_(u), load_(p, u.b, u.h) {}

  /// Rows go through fixed blocks of `block_rows` (the tail through a dynamic block), so
  /// every row sees the same code whichever rows a thread owns: 1 and 2 threads agree bitwise.
  static constexpr int block_rows = 8;

  void token(index_t t) {
    const auto x = load_.load(t);
    int i = u_.row0;
    for (; i + block_rows <= u_.row1; i += block_rows) update<block_rows>(x, t, i, block_rows);
    if (i < u_.row1) update<Eigen::Dynamic>(x, t, i, u_.row1 - i);
    load_.commit_y(t, u_.row0, u_.row1);
  }

  void finish() {}
  void store(A* dst) const { store_transposed(p_.state.at(u_.b, u_.h), dst, u_.row0, u_.row1, p_.n); }

 private:
  template <int Rows>
  void update(const typename token_loader<T, A, N>::token& x, index_t t, int row0, int rows) {
    using state_block = Eigen::Map<Eigen::Matrix<A, Rows, Extent, Eigen::RowMajor>>;
    using rows_vector = Eigen::Map<Eigen::Matrix<A, Rows, 1>>;
    const int n = p_.n;
    const key_map r(x.r, n), w(x.w, n), k(x.k, n), a(x.a, n), b(x.b, n);
    const Eigen::Map<const Eigen::Matrix<A, Rows, 1>> v(x.v + row0, rows);
    state_block s(p_.state.at(u_.b, u_.h) + static_cast<index_t>(row0) * n, rows, n);
    rows_vector removal(removal_.data(), rows);
    rows_vector y(load_.y_target(t) + row0, rows);

    // Aliasing: the removal term reads the OLD state, so it is computed first; the update
    // is then coefficient-wise in place (every term is lazy, no temporary is created).
    removal.noalias() = s.lazyProduct(a);
    if (A* saved = p_.removal_target(u_.b, t, u_.h)) std::copy_n(removal.data(), rows, saved + row0);
    s = s * w.asDiagonal() + removal.lazyProduct(b.transpose()) + v.lazyProduct(k.transpose());
    y.noalias() = s.lazyProduct(r);
  }

  const problem<T, A>& p_;
  unit u_;
  token_loader<T, A, N> load_;
  Eigen::Matrix<A, block_rows, 1> removal_;
};

}  // namespace metastate::wkv7::detail
