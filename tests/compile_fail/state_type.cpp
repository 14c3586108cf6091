// Must not compile: a bfloat16 state (states are at least float).
#include <metastate/wkv/wkv7.hpp>
void f(metastate::wkv7::inputs<Eigen::bfloat16> in, metastate::state_view<Eigen::bfloat16> s,
       metastate::sequence_view<Eigen::bfloat16> y) {
  metastate::wkv7::sequence(in, s, y);
}
