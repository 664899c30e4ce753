# Runs `MPIEXEC -np 2 PROGRAM CASE` and passes if it fails (non-zero status) within TIMEOUT
# seconds with output matching EXPECT.
execute_process(COMMAND ${MPIEXEC} -np 2 --oversubscribe ${PROGRAM} ${CASE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT ${TIMEOUT})
message(STATUS "exit status: ${rc}\n${out}\n${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "dist_failure ${CASE}: the job succeeded; it should have failed")
endif()
if(rc MATCHES "timeout")
  message(FATAL_ERROR "dist_failure ${CASE}: the job hung (no end within ${TIMEOUT} s)")
endif()
# mpirun names a rank that died by its process name, [[job,1],rank].
if(NOT "${out}${err}" MATCHES "${EXPECT}" AND NOT "${out}${err}" MATCHES "Process name: \\[\\[[0-9]+,[0-9]+\\],1\\]")
  message(FATAL_ERROR "dist_failure ${CASE}: no output matching '${EXPECT}'")
endif()
