# ctest driver: configures the project in WORK with METASTATE_SANITIZE=ON (ASan + UBSan, -O1 -g), builds the
# doctest suite and the CLI it runs, and runs the suite. Sanitizer reports go to WORK/reports/, so that one
# from a CLI run (whose output the suite captures) fails the test too; any report is printed.
include(${CMAKE_CURRENT_LIST_DIR}/../run_step.cmake)

run_step(${CMAKE_COMMAND} -S ${SOURCE} -B ${WORK}/build -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Debug
         -DMETASTATE_SANITIZE=ON -DMETASTATE_BUILD_BENCHMARKS=OFF -DMETASTATE_INSTALL=OFF)
run_step(${CMAKE_COMMAND} --build ${WORK}/build --target metastate_tests --parallel 2)

file(REMOVE_RECURSE ${WORK}/reports)
file(MAKE_DIRECTORY ${WORK}/reports)
set(ENV{ASAN_OPTIONS} "log_path=${WORK}/reports/asan:detect_leaks=1:check_initialization_order=1")
set(ENV{UBSAN_OPTIONS} "log_path=${WORK}/reports/ubsan:print_stacktrace=1:halt_on_error=1")
execute_process(COMMAND ${WORK}/build/bin/metastate_tests RESULT_VARIABLE rc)
file(GLOB reports ${WORK}/reports/*)
foreach(report IN LISTS reports)
  file(READ ${report} text)
  message("${report}:\n${text}")
endforeach()
list(LENGTH reports count)
if(NOT rc EQUAL 0 OR count GREATER 0)
  message(FATAL_ERROR "sanitize: the suite exited with ${rc}; ${count} sanitizer report(s), printed above")
endif()
