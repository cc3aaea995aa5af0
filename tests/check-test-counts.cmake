# Fails unless every doctest binary named after `--` has exactly one ctest test per test case.
#
#   cmake -D CTEST_COMMAND=ctest -D BUILD_DIR=DIR -P check-test-counts.cmake -- BINARY...
#
# doctest_discover_tests registers one ctest test per line of `BINARY --list-test-cases` and hands
# the name through CMake lists, so a test case whose name holds a ';' becomes two ctest tests whose
# filters match nothing: both pass, and the test case itself never runs. The FAIL_REGULAR_EXPRESSION
# set in tests/CMakeLists.txt fails such a test when it runs; this check also catches it when the
# tests are only listed, and any other way the two lists can drift apart (a binary whose discovery
# did not run, a test registered by hand for a binary that discovery also covers).
cmake_minimum_required(VERSION 3.25)

set(binaries)
set(after_dashes OFF)
math(EXPR last_arg "${CMAKE_ARGC} - 1")
foreach(i RANGE ${last_arg})
  if(after_dashes)
    list(APPEND binaries "${CMAKE_ARGV${i}}")
  elseif("${CMAKE_ARGV${i}}" STREQUAL "--")
    set(after_dashes ON)
  endif()
endforeach()
if(NOT binaries OR NOT CTEST_COMMAND OR NOT BUILD_DIR)
  message(FATAL_ERROR "usage: cmake -D CTEST_COMMAND=ctest -D BUILD_DIR=DIR -P check-test-counts.cmake -- BINARY...")
endif()

# Every registered test, with its command line, as ctest itself sees them.
execute_process(COMMAND "${CTEST_COMMAND}" --show-only=json-v1
  WORKING_DIRECTORY "${BUILD_DIR}" OUTPUT_VARIABLE listing RESULT_VARIABLE result ERROR_VARIABLE errors)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "ctest --show-only=json-v1 in ${BUILD_DIR} failed (${result}): ${errors}")
endif()
string(JSON test_count LENGTH "${listing}" tests)

# A test belongs to a binary when the binary is one of its command's words: the first one, or the
# second when a wrapper runs it (tests/tsan/run-checked under ThreadSanitizer).
foreach(binary IN LISTS binaries)
  set(registered_${binary} 0)
endforeach()
if(test_count GREATER 0)
  math(EXPR last_test "${test_count} - 1")
  foreach(t RANGE ${last_test})
    string(JSON words ERROR_VARIABLE no_command LENGTH "${listing}" tests ${t} command)
    if(no_command OR words EQUAL 0)
      continue()
    endif()
    # Only the first two words: this check's own command names every binary further on.
    set(last_word 1)
    if(words EQUAL 1)
      set(last_word 0)
    endif()
    foreach(w RANGE ${last_word})
      string(JSON word GET "${listing}" tests ${t} command ${w})
      if(word IN_LIST binaries)
        math(EXPR registered_${word} "${registered_${word}} + 1")
        break()
      endif()
    endforeach()
  endforeach()
endif()

set(mismatches 0)
foreach(binary IN LISTS binaries)
  get_filename_component(name "${binary}" NAME)
  execute_process(COMMAND "${binary}" --count OUTPUT_VARIABLE counted RESULT_VARIABLE result ERROR_VARIABLE errors)
  if(NOT result EQUAL 0 OR NOT counted MATCHES "passing the current filters: ([0-9]+)")
    message(SEND_ERROR "${name}: `${binary} --count` failed (${result}): ${counted}${errors}")
    math(EXPR mismatches "${mismatches} + 1")
    continue()
  endif()
  set(cases ${CMAKE_MATCH_1})
  if(NOT cases EQUAL registered_${binary})
    message(SEND_ERROR
      "${name}: doctest lists ${cases} test cases, but ctest has ${registered_${binary}} tests for it. "
      "A test case name with ';' in it is split into two ctest tests that run nothing; "
      "compare `${binary} --list-test-cases` with `ctest -N`.")
    math(EXPR mismatches "${mismatches} + 1")
  else()
    message(STATUS "${name}: ${cases} test cases, ${registered_${binary}} ctest tests")
  endif()
endforeach()
if(mismatches GREATER 0)
  message(FATAL_ERROR "doctest binaries whose test cases and ctest tests differ: ${mismatches}")
endif()
