# ctest driver for builds without METASTATE_CUDA: configures the project in WORK with METASTATE_CUDA=ON,
# builds the CUDA test suite and the CUDA benchmark (so that CI compiles every kernel with nvcc), and runs
# the suite, which skips itself where there is no GPU. Without nvcc the test reports itself skipped.
include(${CMAKE_CURRENT_LIST_DIR}/../run_step.cmake)

find_program(NVCC nvcc HINTS /usr/local/cuda/bin)
if(NOT NVCC)
  message("no CUDA compiler (nvcc) found: the CUDA build is skipped")
  return()
endif()
run_step(${CMAKE_COMMAND} -S ${SOURCE} -B ${WORK}/build -DCMAKE_CUDA_COMPILER=${NVCC} -DMETASTATE_CUDA=ON
         -DMETASTATE_INSTALL=OFF)
run_step(${CMAKE_COMMAND} --build ${WORK}/build --target metastate_cuda_tests metastate_bench_cuda --parallel 2)
execute_process(COMMAND ${WORK}/build/bin/metastate_cuda_tests RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 AND NOT rc EQUAL 77)  # 77: no GPU, the suite said so
  message(FATAL_ERROR "the CUDA test suite failed (${rc})")
endif()
