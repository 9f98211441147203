# One ctest entry per GoogleTest suite (`Suite` runs `program --gtest_filter=Suite.*`) rather than
# one per case as gtest_discover_tests registers them: each process loads libtorch (~0.7 s of CPU),
# so a process per case spent minutes of a run on start-ups. A failing case is named in the
# entry's output (gtest's "[  FAILED  ] Suite.Case" lines, shown by --output-on-failure); a suite
# whose cases all skip (the CUDA suites on a machine without a GPU) exits with 77 through
# tests/gtest_main.cpp and shows as skipped; one with some skipped cases passes.
#
# Included twice: by tests/CMakeLists.txt, for the function; and by ctest, through the file the
# function generates, to list the program's suites before the tests run (as gtest_discover_tests'
# PRE_TEST mode does; the list is cached next to the build until the program changes).

if(NOT DEFINED SLIDEFORMER_SUITES_PROGRAM)
  set(SLIDEFORMER_SUITES_SCRIPT ${CMAKE_CURRENT_LIST_FILE})

  # slideformer_add_gtest_suites(<target> [TIMEOUT seconds] [ENVIRONMENT VAR=value...])
  function(slideformer_add_gtest_suites target)
    cmake_parse_arguments(PARSE_ARGV 1 arg "" "TIMEOUT" "ENVIRONMENT")
    if(NOT arg_TIMEOUT)
      set(arg_TIMEOUT 1500)
    endif()
    # Idle OpenMP threads sleep rather than spin (libgomp spins by default): on a machine whose
    # cores the tests share (ctest -j, other jobs), a spinning thread took the core its team's
    # working thread waited for. Measured on the 2-core machine shared with other jobs: the
    # InputSizes and Backbone suites took 96 s of CPU (289 s of wall time) with spinning threads,
    # 18 s (22 s) without. What the tests compute is the same.
    list(APPEND arg_ENVIRONMENT OMP_WAIT_POLICY=PASSIVE)
    set(include_file ${CMAKE_CURRENT_BINARY_DIR}/${target}_suites_include.cmake)
    file(GENERATE OUTPUT ${include_file} CONTENT
"set(SLIDEFORMER_SUITES_PROGRAM [==[$<TARGET_FILE:${target}>]==])
set(SLIDEFORMER_SUITES_LIST [==[${CMAKE_CURRENT_BINARY_DIR}/${target}_suites.txt]==])
set(SLIDEFORMER_SUITES_TIMEOUT ${arg_TIMEOUT})
set(SLIDEFORMER_SUITES_ENVIRONMENT [==[${arg_ENVIRONMENT}]==])
include([==[${SLIDEFORMER_SUITES_SCRIPT}]==])
")
    set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${include_file})
  endfunction()
  return()
endif()

# At ctest time: list the suites (lines "Suite." or "Suite.  # TypeParam = ..."; their cases follow,
# indented) and add one entry per suite that has an enabled case.
get_filename_component(program_name "${SLIDEFORMER_SUITES_PROGRAM}" NAME)
if(NOT EXISTS "${SLIDEFORMER_SUITES_PROGRAM}")
  add_test("${program_name}_NOT_BUILT" "${SLIDEFORMER_SUITES_PROGRAM}")
  return()
endif()
if(NOT EXISTS "${SLIDEFORMER_SUITES_LIST}" OR "${SLIDEFORMER_SUITES_PROGRAM}" IS_NEWER_THAN "${SLIDEFORMER_SUITES_LIST}")
  execute_process(COMMAND "${SLIDEFORMER_SUITES_PROGRAM}" --gtest_list_tests
    OUTPUT_VARIABLE listing ERROR_VARIABLE errors RESULT_VARIABLE result TIMEOUT 120)
  if(NOT result EQUAL 0)
    add_test("${program_name}_LIST_FAILED" "${SLIDEFORMER_SUITES_PROGRAM}" --gtest_list_tests)
    return()
  endif()
  # One line per suite: its name and its number of enabled cases.
  set(suites "")
  set(suite "")
  set(cases 0)
  string(REPLACE "\n" ";" lines "${listing}")
  foreach(line IN LISTS lines)
    if(line MATCHES "^([^ ]+)\\.( +#.*)?$")
      if(cases GREATER 0)
        string(APPEND suites "${suite} ${cases}\n")
      endif()
      set(suite "${CMAKE_MATCH_1}")
      set(cases 0)
    elseif(line MATCHES "^  ([^ ]+)" AND NOT CMAKE_MATCH_1 MATCHES "^DISABLED_" AND NOT suite MATCHES "(^|/)DISABLED_")
      math(EXPR cases "${cases} + 1")
    endif()
  endforeach()
  if(cases GREATER 0)
    string(APPEND suites "${suite} ${cases}\n")
  endif()
  file(WRITE "${SLIDEFORMER_SUITES_LIST}" "${suites}")
endif()

file(STRINGS "${SLIDEFORMER_SUITES_LIST}" suites)
foreach(entry IN LISTS suites)
  string(REPLACE " " ";" entry "${entry}")
  list(GET entry 0 suite)
  list(GET entry 1 cases)
  add_test("${suite}" "${SLIDEFORMER_SUITES_PROGRAM}" "--gtest_filter=${suite}.*" --skipped-suite-exit-code=77)
  # COST: with no timings from an earlier run, ctest starts the suites with more cases first.
  set_tests_properties("${suite}" PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT ${SLIDEFORMER_SUITES_TIMEOUT}
    COST ${cases} ENVIRONMENT "${SLIDEFORMER_SUITES_ENVIRONMENT}")
endforeach()
