// WKV-7 `scalar` backend: plain loops, one state row at a time (rows are independent).
#pragma once
#include "metastate/detail/internal_header_check.hpp"

#include "metastate/wkv/detail/driver.hpp"

namespace metastate::wkv7::detail {

template <class T, class A, int N>
class scalar_unit {
 public:
  scalar_unit(const problem<T, A>& p, const unit& u, A* /*scratch: none*/)
      : p_(p), u_(u), load_(p, u.b, u.h), s_(p.state.at(u.b, u.h)) {}

  void token(index_t t) {
    const int n = head_size<N>(p_.n).value();
    const auto x = load_.load(t);
    A* y = load_.y_target(t);
    A* saved_removal = p_.removal_target(u_.b, t, u_.h);
    for (int i = u_.row0; i < u_.row1; ++i) {
      A* row = s_ + static_cast<index_t>(i) * n;
      A removal = 0;  // u_i = (S_{t-1} a)_i, from the old row
      for (int j = 0; j < n; ++j) removal += row[j] * x.a[j];
      if (saved_removal) saved_removal[i] = removal;
      A out = 0;
      for (int j = 0; j < n; ++j) {
        row[j] = row[j] * x.w[j] + removal * x.b[j] + x.v[i] * x.k[j];
        out += row[j] * x.r[j];
      }
      y[i] = out;
    }
    load_.commit_y(t, u_.row0, u_.row1);
  }

  void finish() {}
  void store(A* dst) const { store_transposed(s_, dst, u_.row0, u_.row1, p_.n); }

 private:
  const problem<T, A>& p_;
  unit u_;
  token_loader<T, A, N> load_;
  A* s_;
};

}  // namespace metastate::wkv7::detail
