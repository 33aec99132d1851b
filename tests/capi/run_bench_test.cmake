# tests/capi/run_bench_test.cmake — the `capi_bench` CTest test: resunetpp-capi-bench on the
# fixture checkpoint at a small size must verify its outputs, time them and write its JSON; with
# one mask byte corrupted on purpose (RPP_CAPI_BENCH_CORRUPT=1) it must refuse, naming the check.
#   cmake -DFIXTURE=... -DBENCH=... -DWORK=DIR -P run_bench_test.cmake
foreach(v FIXTURE BENCH WORK)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_bench_test.cmake: -D${v}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
execute_process(COMMAND ${FIXTURE} ${WORK} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the fixture failed (${rc})")
endif()
set(args --checkpoint ${WORK}/tiny.safetensors --width 53 --height 37 --batch 5 --repeats 3 --batch-repeats 2
  --warmup 1)

execute_process(COMMAND ${BENCH} ${args} --json ${WORK}/bench.json RESULT_VARIABLE rc OUTPUT_VARIABLE out
  ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "resunetpp-capi-bench failed (${rc}):\n${out}\n${err}")
endif()
if(NOT out MATCHES "verified: 5 batch outputs")
  message(FATAL_ERROR "no verification line in:\n${out}")
endif()
file(READ ${WORK}/bench.json json)
foreach(key segment segment_batch)
  string(JSON calls GET "${json}" ${key} calls)
  string(JSON rate GET "${json}" ${key} images_per_s)
  if(calls LESS 2 OR NOT rate GREATER 0)
    message(FATAL_ERROR "${key}: ${calls} calls, ${rate} images/s in:\n${json}")
  endif()
endforeach()
string(JSON per_call GET "${json}" segment_batch images_per_call)
string(JSON size GET "${json}" input_size)
if(NOT per_call EQUAL 5 OR NOT size EQUAL 32)
  message(FATAL_ERROR "batch ${per_call} (want 5), input size ${size} (want the checkpoint's 32) in:\n${json}")
endif()

execute_process(COMMAND ${CMAKE_COMMAND} -E env RPP_CAPI_BENCH_CORRUPT=1 ${BENCH} ${args}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "verification failed: batch call, frame 4: mask")
  message(FATAL_ERROR "a corrupted mask was not refused (${rc}):\n${out}\n${err}")
endif()
if(out MATCHES "images/s")
  message(FATAL_ERROR "timed after a failed verification:\n${out}")
endif()

execute_process(COMMAND ${BENCH} --checkpoint ${WORK}/missing.safetensors RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "missing.safetensors")
  message(FATAL_ERROR "a missing checkpoint was not reported by name (${rc}): ${err}")
endif()
file(REMOVE_RECURSE ${WORK})
