// metastate configuration switches: compiler detection, CUDA phases, OpenMP presence.
#pragma once

// Two CUDA switches, as in Eigen: "this translation unit is compiled by nvcc" and
// "this is the device pass". Host-only users see neither and never include CUDA headers.
#if defined(__CUDACC__)
#define METASTATE_CUDA_COMPILER 1
#else
#define METASTATE_CUDA_COMPILER 0
#endif
#if defined(__CUDA_ARCH__)
#define METASTATE_CUDA_DEVICE_PASS 1
#else
#define METASTATE_CUDA_DEVICE_PASS 0
#endif

#if METASTATE_CUDA_COMPILER
#define METASTATE_HOST_DEVICE __host__ __device__
#else
#define METASTATE_HOST_DEVICE
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
