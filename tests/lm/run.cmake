# dimx-lm end to end (ctest): a 30-step run lowers the loss; a run stopped at step 15 and
# resumed ends bitwise equal to the uninterrupted one; sampling with state equals recomputing
# the prefix; bad flags, a missing data file and a corrupt checkpoint each exit with code 2 and
# one message; the loss and attention pictures are PNGs where gnuplot is installed.
# Run with: cmake -DLM=path/to/dimx-lm -DWORK_DIR=... -DDATA=... -P run.cmake
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(tiny --data ${DATA} --block rwkv,attention --model 32 --hidden 64 --heads 2 --batch 4 --max-len 64
    --eval-every 10 --eval-lines 32 --warmup 5 --lr 5e-3)

function(lm expect_rc)
  execute_process(COMMAND ${LM} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL expect_rc)
    message(FATAL_ERROR "dimx-lm ${ARGN}: exit ${rc}, expected ${expect_rc}\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
  set(err "${err}" PARENT_SCOPE)
endfunction()

# 1. 30 steps: the mean training loss of the last 5 steps is below that of the first 5.
lm(0 train ${tiny} --steps 30 --out ${WORK_DIR}/full)
file(STRINGS ${WORK_DIR}/full/train.csv rows)
list(REMOVE_AT rows 0)
list(LENGTH rows n)
if(NOT n EQUAL 30)
  message(FATAL_ERROR "train.csv has ${n} rows, expected 30")
endif()
set(first 0)
set(last 0)
foreach(i RANGE 0 4)
  list(GET rows ${i} r)
  string(REPLACE "," ";" r "${r}")
  list(GET r 2 v)
  math(EXPR j "25 + ${i}")
  list(GET rows ${j} s)
  string(REPLACE "," ";" s "${s}")
  list(GET s 2 w)
  # CMake has no floats: compare the values scaled to integers.
  string(REGEX REPLACE "^([0-9]+)\\.([0-9][0-9][0-9]).*" "\\1\\2" vi "${v}.000")
  string(REGEX REPLACE "^([0-9]+)\\.([0-9][0-9][0-9]).*" "\\1\\2" wi "${w}.000")
  math(EXPR first "${first} + ${vi}")
  math(EXPR last "${last} + ${wi}")
endforeach()
if(NOT last LESS first)
  message(FATAL_ERROR "the loss did not decrease: first 5 steps ${first}, last 5 ${last} (millibits, summed)")
endif()
message(STATUS "loss, first 5 steps vs last 5 (millibits, summed): ${first} -> ${last}")

# 2. Stopped at 15 and resumed: the same model and optimizer state, bit for bit.
lm(0 train ${tiny} --steps 30 --stop-after 15 --out ${WORK_DIR}/part)
lm(0 train ${tiny} --steps 30 --out ${WORK_DIR}/part --resume ${WORK_DIR}/part/checkpoint)
foreach(f model.safetensors optimizer.safetensors)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK_DIR}/full/checkpoint/${f}
                  ${WORK_DIR}/part/checkpoint/${f} RESULT_VARIABLE same)
  if(NOT same EQUAL 0)
    message(FATAL_ERROR "the resumed run's ${f} differs from the uninterrupted run's")
  endif()
endforeach()

# 3. Sampling with state == recomputing the whole prefix (greedy), and a sampled run.
lm(0 sample --checkpoint ${WORK_DIR}/full/checkpoint --tokens 24 --greedy --verify)
if(NOT out MATCHES "verify: 0 greedy picks differ")
  message(FATAL_ERROR "sampling with state differs from recomputation:\n${out}")
endif()
lm(0 sample --checkpoint ${WORK_DIR}/full/checkpoint --tokens 24 --temperature 0.9 --top-k 8 --seed 3)

# 4. Misuse: exit code 2 and one line naming the problem.
lm(2 train --no-such-flag)
lm(2 train --data ${WORK_DIR}/missing.txt)
if(NOT err MATCHES "missing.txt")
  message(FATAL_ERROR "the missing data file is not named:\n${err}")
endif()
lm(2 train ${tiny} --block lstm)
file(MAKE_DIRECTORY ${WORK_DIR}/corrupt)
file(WRITE ${WORK_DIR}/corrupt/model.safetensors "not a safetensors file")
lm(2 sample --checkpoint ${WORK_DIR}/corrupt)
lm(2 eval --checkpoint ${WORK_DIR}/corrupt)
lm(2 sample --checkpoint ${WORK_DIR}/full/checkpoint --temperature 0)
lm(2 train ${tiny} --device cuda:7)

# 5. The pictures, where gnuplot exists: the loss curves, and the attention block's map (the
#    RWKV block has none).
find_program(GNUPLOT gnuplot)
if(GNUPLOT)
  foreach(png loss.png attention_block1.png)
    file(READ ${WORK_DIR}/full/${png} head LIMIT 8 HEX)
    if(NOT head STREQUAL "89504e470d0a1a0a")
      message(FATAL_ERROR "${png} is not a PNG (starts with ${head})")
    endif()
  endforeach()
  if(EXISTS ${WORK_DIR}/full/attention_block0.png)
    message(FATAL_ERROR "an attention picture for the RWKV block")
  endif()
endif()
message(STATUS "dimx-lm: all checks passed")
