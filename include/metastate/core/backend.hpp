// Backend tags, chosen at compile time; a more specific backend falls back by inheritance.
#pragma once

#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace metastate::backend {

/// Plain loops: the reference every other backend must match.
struct scalar {};
/// The fused lazy Eigen expression: the generic path and the test oracle.
struct eigen : scalar {};

/// The 8-lane architecture when the compiler targets AVX2 (with FMA); otherwise the best
/// one xsimd was compiled for. Head sizes that are not a multiple of the widest lane count
/// run on this one.
#if XSIMD_WITH_FMA3_AVX2
using narrow_simd_arch = xsimd::fma3<xsimd::avx2>;
#elif XSIMD_WITH_AVX2
using narrow_simd_arch = xsimd::avx2;
#else
using narrow_simd_arch = xsimd::default_arch;
#endif

/// The widest architecture the compiler targets: 16-lane AVX-512 where available (on this
/// project's machine it doubles the FMA rate of 8-lane AVX2; docs/PERFORMANCE.md),
/// else `narrow_simd_arch`.
#if XSIMD_WITH_AVX512F
using default_simd_arch = xsimd::avx512f;
#else
using default_simd_arch = narrow_simd_arch;
#endif

/// Vector registers of an architecture (32 for AVX-512 and 64-bit NEON, else 16): how
/// wide a register tile can be without spilling.
template <class Arch>
inline constexpr int registers =
#if XSIMD_WITH_AVX512F
    std::is_base_of_v<xsimd::avx512f, Arch> ? 32 :
#endif
#if XSIMD_WITH_NEON64
    std::is_base_of_v<xsimd::neon64, Arch> ? 32 :
#endif
                                                  16;

/// The fused xsimd kernel. Head sizes that are not a multiple of the lane count run on
/// `narrow_simd_arch` when they are a multiple of its lane count, else fall back to the
/// `eigen` backend, as do storage types it does not vectorise.
template <class Arch = default_simd_arch>
struct simd : eigen {
  using arch = Arch;
};

/// Reserved for the CUDA specialisations (`cuda/metastate/cuda/`); it has no host fallback,
/// so asking for it on host memory is a compile error, not a silent CPU run.
struct cuda {};

/// What the public functions use when no backend is named.
using default_backend = simd<>;

}  // namespace metastate::backend
