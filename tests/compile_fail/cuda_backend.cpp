// Must not compile: the cuda backend from a host-only translation unit.
#include <metastate/wkv/wkv7.hpp>
void f(metastate::wkv7::inputs<float> in, metastate::state_view<float> s, metastate::sequence_view<float> y) {
  metastate::wkv7::sequence<64, metastate::backend::cuda>(in, s, y);
}
