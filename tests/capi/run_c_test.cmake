# tests/capi/run_c_test.cmake — the `capi_c_test` CTest test: makes the fixture checkpoint and
# images, segments them with `resunetpp predict` and with the example program `segment`
# (tools/examples/segment.c), then runs the C program tests/capi_c_test.c, which compares its own
# masks with predict's byte for byte, and the example's masks with predict's.
#   cmake -DFIXTURE=... -DCLI=... -DEXAMPLE=... -DC_TEST=... -DWORK=DIR -P run_c_test.cmake
foreach(v FIXTURE CLI EXAMPLE C_TEST WORK)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_c_test.cmake: -D${v}=... is required")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
run(${FIXTURE} ${WORK})
run(${CLI} predict --checkpoint ${WORK}/tiny.safetensors --input ${WORK}/images --out ${WORK}/predict)
run(${C_TEST} ${WORK}/tiny.safetensors ${WORK}/images ${WORK}/predict/masks a b c d)
file(MAKE_DIRECTORY ${WORK}/example)
foreach(stem a b c d)
  run(${EXAMPLE} ${WORK}/tiny.safetensors ${WORK}/images/${stem}.png ${WORK}/example/${stem}.png)
endforeach()
run(${C_TEST} --compare-masks ${WORK}/predict/masks ${WORK}/example a b c d)
file(REMOVE_RECURSE ${WORK})
