// doctest main, and the test that prints the build configuration.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <metastate/metastate.hpp>

#include <iostream>

TEST_CASE("build configuration") {
  namespace ms = metastate;
  std::cout << "metastate " << ms::version_string << ": simd arch " << ms::backend::default_simd_arch::name()
            << " (" << xsimd::batch<float, ms::backend::default_simd_arch>::size << " lanes), OpenMP "
            << (METASTATE_HAS_OPENMP ? "on" : "off") << ", threads " << ms::resolve_threads({}) << ", CUDA "
            << (METASTATE_CUDA_COMPILER ? "on" : "off") << ", value checks "
            << (METASTATE_VALIDATE_VALUES ? "on" : "off") << '\n';
  CHECK(ms::resolve_threads({}) >= 1);
}
