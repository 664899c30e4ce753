# dimx-lm train --distributed under `mpirun -np 2` (ctest): each step's loss equals the
# single-process run's on the same lines (the ranks' gradients averaged, weighted by tokens);
# a 2-rank run stopped at step 4 and resumed by both ranks from rank 0's checkpoint ends
# bitwise equal to the uninterrupted 2-rank run; --batch not a multiple of the ranks ends
# every rank with an error naming the rank.
# Run with: cmake -DLM=... -DMPIEXEC=... -DWORK_DIR=... -DDATA=... -P distributed.cmake
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(base --data ${DATA} --block rwkv,attention --model 32 --hidden 64 --heads 2 --max-len 64
    --eval-every 4 --eval-lines 16 --warmup 2 --lr 5e-3 --steps 8)
set(tiny ${base} --batch 4)
set(mpi ${MPIEXEC} -np 2 --oversubscribe)

function(run expect_rc)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 240)
  if(expect_rc EQUAL 0 AND NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN}: exit ${rc}\n${out}\n${err}")
  endif()
  if(NOT expect_rc EQUAL 0 AND (rc EQUAL 0 OR rc MATCHES "timeout"))
    message(FATAL_ERROR "${ARGN}: exit ${rc}, expected a failure\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
  set(err "${err}" PARENT_SCOPE)
endfunction()

# The train_bpb column of a train.csv, in units of 1e-4 bits.
function(losses csv var)
  file(STRINGS ${csv} rows)
  list(REMOVE_AT rows 0)
  set(v "")
  foreach(r IN LISTS rows)
    string(REPLACE "," ";" r "${r}")
    list(GET r 2 x)
    # Four decimals, padded with zeros ("6.882" is 68820; "7" is 70000).
    if(x MATCHES "\\.")
      set(x "${x}0000")
    else()
      set(x "${x}.0000")
    endif()
    string(REGEX REPLACE "^([0-9]+)\\.([0-9][0-9][0-9][0-9]).*" "\\1\\2" xi "${x}")
    list(APPEND v ${xi})
  endforeach()
  set(${var} "${v}" PARENT_SCOPE)
endfunction()

# 1. Two ranks == one process, step by step.
run(0 ${LM} train ${tiny} --out ${WORK_DIR}/single)
run(0 ${mpi} ${LM} train ${tiny} --distributed --out ${WORK_DIR}/dist)
if(NOT out MATCHES "data-parallel over 2 ranks")
  message(FATAL_ERROR "the distributed run does not say it is one:\n${out}")
endif()
losses(${WORK_DIR}/single/train.csv a)
losses(${WORK_DIR}/dist/train.csv b)
list(LENGTH a n)
list(LENGTH b m)
if(NOT n EQUAL 8 OR NOT m EQUAL 8)
  message(FATAL_ERROR "expected 8 rows in both train.csv files, got ${n} and ${m}")
endif()
foreach(i RANGE 7)
  list(GET a ${i} x)
  list(GET b ${i} y)
  math(EXPR d "${x} - ${y}")
  if(d GREATER 2 OR d LESS -2)
    message(FATAL_ERROR "step ${i}: single-process loss ${x}, 2-rank loss ${y} (1e-4 bits)")
  endif()
endforeach()
message(STATUS "2 ranks vs 1 process, losses (1e-4 bits): ${b} vs ${a}")

# 2. Stopped and resumed by both ranks: bitwise the uninterrupted run's checkpoint.
run(0 ${mpi} ${LM} train ${tiny} --distributed --stop-after 4 --out ${WORK_DIR}/part)
run(0 ${mpi} ${LM} train ${tiny} --distributed --out ${WORK_DIR}/part --resume ${WORK_DIR}/part/checkpoint)
foreach(f model.safetensors optimizer.safetensors)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK_DIR}/dist/checkpoint/${f}
                  ${WORK_DIR}/part/checkpoint/${f} RESULT_VARIABLE same)
  if(NOT same EQUAL 0)
    message(FATAL_ERROR "the resumed 2-rank run's ${f} differs from the uninterrupted 2-rank run's")
  endif()
endforeach()

# 3. An error on every rank names the rank; the job ends.
run(1 ${mpi} ${LM} train ${base} --distributed --batch 3 --out ${WORK_DIR}/bad)
if(NOT err MATCHES "rank [01]: --batch 3 is not a multiple of the 2 ranks")
  message(FATAL_ERROR "the error does not name the rank:\n${out}\n${err}")
endif()
