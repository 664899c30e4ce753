# Builds dimx, installs it into a prefix, then configures, builds and runs an outside
# project that uses find_package(dimx) and dimx::dimx. Run with cmake -P.
foreach(v DIMX_SOURCE_DIR WORK_DIR GENERATOR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "install_consumer: ${v} is not set")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

function(step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install_consumer: ${name} failed (${rc})\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

step("configure dimx" ${CMAKE_COMMAND} -S ${DIMX_SOURCE_DIR} -B ${WORK_DIR}/dimx -G ${GENERATOR}
     -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=${prefix} -DDIMX_WITH_CUDA=OFF
     -DDIMX_BUILD_TESTS=OFF -DDIMX_BUILD_EXAMPLES=OFF -DDIMX_BUILD_BENCH=OFF)
step("build dimx" ${CMAKE_COMMAND} --build ${WORK_DIR}/dimx -j 2)
step("install dimx" ${CMAKE_COMMAND} --install ${WORK_DIR}/dimx)
step("configure consumer" ${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR}/consumer -B ${WORK_DIR}/consumer
     -G ${GENERATOR} -DCMAKE_PREFIX_PATH=${prefix})
step("build consumer" ${CMAKE_COMMAND} --build ${WORK_DIR}/consumer)
step("run consumer" ${WORK_DIR}/consumer/app)
if(NOT step_output MATCHES "masked mean: 2 5")
  message(FATAL_ERROR "install_consumer: unexpected output:\n${step_output}")
endif()
message(STATUS "install_consumer: ${step_output}")
