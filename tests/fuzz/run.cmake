# ctest driver: builds tests/fuzz with clang++ (CXX), has the target write its seed corpus, then fuzzes the
# safetensors reader for SECONDS seconds. Fails on a build error and on any crash, sanitizer report, leak,
# timeout or uncaught exception; the input that caused it is left in WORK and named in the message.
if(NOT CXX OR NOT EXISTS "${CXX}")
  message(FATAL_ERROR "fuzz: clang++ not found (METASTATE_FUZZ_CXX='${CXX}'); install the Debian packages "
                      "clang and libclang-rt-14-dev (tools/install-deps does), then re-run cmake")
endif()
include(${CMAKE_CURRENT_LIST_DIR}/../run_step.cmake)

# The build is kept between runs; the corpus and any findings are not.
file(REMOVE_RECURSE ${WORK}/seeds ${WORK}/corpus ${WORK}/findings)
file(MAKE_DIRECTORY ${WORK}/corpus ${WORK}/findings)
run_step(${CMAKE_COMMAND} -S ${SOURCE}/tests/fuzz -B ${WORK}/build -DCMAKE_CXX_COMPILER=${CXX}
         -DCMAKE_BUILD_TYPE=Debug -DMETASTATE_SOURCE=${SOURCE} -DMETASTATE_OPENMP=OFF)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/build RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "fuzz: building the fuzz target with ${CXX} failed; libFuzzer and the sanitizer "
                      "runtimes come with the Debian package libclang-rt-14-dev")
endif()

set(fuzzer ${WORK}/build/fuzz_safetensors)
run_step(${fuzzer} -write_seeds=${WORK}/seeds)
execute_process(COMMAND ${fuzzer} -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048
                        -verbosity=0 -print_funcs=0 -print_final_stats=1 -artifact_prefix=${WORK}/findings/
                        -dict=${SOURCE}/tests/fuzz/safetensors.dict ${WORK}/corpus ${WORK}/seeds
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(GLOB findings ${WORK}/findings/*)
  message(FATAL_ERROR "fuzz: libFuzzer failed (${rc}); reproduce with: ${fuzzer} ${findings}")
endif()
