# Installs dimx into a prefix (from DIMX_BUILD_DIR, the test suite's build, or from a build of
# its own), then configures, builds and runs an outside project that uses find_package(dimx)
# and dimx::dimx alone, on the CPU and, where the package has the CUDA layer and the machine a
# device, on the GPU (find_package(dimx COMPONENTS cuda) is checked when the layer is there).
# Every installed public header is also compiled
# on its own in that project, so a header that needs something the package does not ship
# (a file from src/, a private dependency) fails here.
# Run with: cmake -DDIMX_SOURCE_DIR=... -DWORK_DIR=... -DGENERATOR=... -P run.cmake
foreach(v DIMX_SOURCE_DIR WORK_DIR GENERATOR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "install_consumer: ${v} is not set")
  endif()
endforeach()
set(build ${WORK_DIR}/build)
set(prefix ${WORK_DIR}/prefix)
set(consumer ${WORK_DIR}/consumer)
# The dimx build folder is kept between runs (a rebuild is incremental); the install prefix
# and the consumer are always made from scratch.
file(REMOVE_RECURSE ${prefix} ${consumer})

function(step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install_consumer: ${name} failed (${rc})\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

if(DEFINED DIMX_BUILD_DIR)
  # Install what the test suite's own build made (with the CUDA layer where it was built).
  step("install dimx" ${CMAKE_COMMAND} --install ${DIMX_BUILD_DIR} --prefix ${prefix})
else()
  step("configure dimx" ${CMAKE_COMMAND} -S ${DIMX_SOURCE_DIR} -B ${build} -G ${GENERATOR}
       -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=${prefix}
       -DDIMX_BUILD_TESTS=OFF -DDIMX_BUILD_EXAMPLES=OFF -DDIMX_BUILD_BENCH=OFF)
  step("build dimx" ${CMAKE_COMMAND} --build ${build} -j 2)
  step("install dimx" ${CMAKE_COMMAND} --install ${build})
endif()

# One translation unit per installed header, each including only that header.
file(GLOB_RECURSE headers RELATIVE ${prefix}/include ${prefix}/include/dimx/*.h)
if(NOT headers)
  message(FATAL_ERROR "install_consumer: no headers installed under ${prefix}/include/dimx")
endif()
set(header_tus "")
foreach(h IN LISTS headers)
  string(MAKE_C_IDENTIFIER ${h} id)
  file(WRITE ${consumer}/headers/${id}.cpp "#include <${h}>\n")
  list(APPEND header_tus ${consumer}/headers/${id}.cpp)
endforeach()

file(GLOB cuda_layer ${prefix}/lib*/libdimx_cuda.so.0)
set(require_cuda OFF)
if(cuda_layer)
  set(require_cuda ON)
endif()
file(GLOB dist_lib ${prefix}/lib*/libdimx_dist.so.0)
set(require_dist OFF)
if(dist_lib)
  set(require_dist ON)
endif()
step("configure consumer" ${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR}/consumer -B ${consumer}/build
     -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix}
     -DREQUIRE_CUDA=${require_cuda} -DREQUIRE_DIST=${require_dist} "-DHEADER_CHECK_SOURCES=${header_tus}")
step("build consumer" ${CMAKE_COMMAND} --build ${consumer}/build -j 2)
step("run consumer" ${consumer}/build/app)
if(NOT step_output MATCHES "masked mean over time: 2 5\n")
  message(FATAL_ERROR "install_consumer: unexpected output:\n${step_output}")
endif()
if(cuda_layer AND NOT step_output MATCHES "cuda layer: yes")
  message(FATAL_ERROR "install_consumer: the installed CUDA layer was not loaded:\n${step_output}")
endif()
set(app_output "${step_output}")
if(require_dist)
  step("run dist consumer" ${consumer}/build/dist_app)
  if(NOT step_output MATCHES "dist: 1 rank\\(s\\), all_reduce 3, shard 10")
    message(FATAL_ERROR "install_consumer: unexpected output of dist_app:\n${step_output}")
  endif()
  string(APPEND app_output "${step_output}")
endif()
list(LENGTH headers n)
message(STATUS "install_consumer: ${n} public headers compile alone; app says: ${app_output}")
