// Proves that wkv7::step allocates nothing on the heap for a static head size (Eigen's nomalloc test).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "wkv_harness.hpp"

// The replacement new allocates with malloc, so its delete frees with free.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  if (counting) ++allocations;
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace ms = metastate;

TEST_CASE_TEMPLATE("wkv7 step allocates nothing for a static head size", Backend, ms::backend::scalar,
                   ms::backend::eigen, ms::backend::simd<>) {
  for (auto type_tag : {0, 1}) {
    const auto p = ref::random_problem(2, 1, 12, 64, 3);
    auto run = [&](auto storage) {
      using T = decltype(storage);
      harness::stored_inputs<T> in(p);
      std::vector<T> y(p.seq_size());
      std::vector<float> state = harness::convert<float>(p.s0);
      const ms::state_view<float> sv(state.data(), p.B, p.H, p.N);
      const ms::sequence_view<T> yv(y.data(), p.B, 1, p.H, p.N);
      for (int threads : {1, 2}) {
        ms::wkv7::options opt;
        opt.exec.threads = threads;
        ms::wkv7::step<64, Backend>(in.all(), sv, yv, opt);  // warm-up: OpenMP builds its team here
        allocations = 0;
        counting = true;
        ms::wkv7::step<64, Backend>(in.all(), sv, yv, opt);
        counting = false;
        CAPTURE(threads);
        CHECK(allocations.load() == 0);
      }
    };
    if (type_tag == 0) run(float{});
    else run(Eigen::bfloat16{});
  }
}

TEST_CASE("the allocation counter sees a heap allocation (the check can fail)") {
  allocations = 0;
  counting = true;
  auto* p = new std::vector<int>(100);
  counting = false;
  delete p;
  CHECK(allocations.load() >= 2);
}
