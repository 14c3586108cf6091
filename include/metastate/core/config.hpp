// metastate configuration switches: the CUDA compiler, OpenMP presence, inlining hints.
#pragma once

// "This translation unit is compiled by nvcc" (Eigen's EIGEN_CUDACC): host-only users never
// include CUDA headers.
#if defined(__CUDACC__)
#define METASTATE_CUDA_COMPILER 1
#else
#define METASTATE_CUDA_COMPILER 0
#endif

#if defined(_OPENMP)
#define METASTATE_HAS_OPENMP 1
#else
#define METASTATE_HAS_OPENMP 0
#endif

// Inlining hints for the few places where the compiler's choice costs measurably (each use
// says why). Other compilers get plain `inline`.
#if defined(__GNUC__)
#define METASTATE_ALWAYS_INLINE __attribute__((always_inline)) inline
#define METASTATE_COLD __attribute__((noinline, cold))
#else
#define METASTATE_ALWAYS_INLINE inline
#define METASTATE_COLD
#endif

// Value-range checks (decay in (0,1], finite inputs) run in debug builds and whenever
// METASTATE_VALIDATE_VALUES is defined to 1; shape checks always run.
#if !defined(METASTATE_VALIDATE_VALUES)
#if defined(NDEBUG)
#define METASTATE_VALIDATE_VALUES 0
#else
#define METASTATE_VALIDATE_VALUES 1
#endif
#endif

// Lets the private headers under detail/ check they are included through a public one.
#define METASTATE_INTERNAL_INCLUDE_ALLOWED 1
