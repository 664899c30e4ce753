"""The timer the PyTorch peers of dimx's benchmarks share: the median of `reps` calls after
three warm-up calls, in milliseconds; CUDA events around each call on a GPU, wall time on the
CPU."""
import time

import torch


def median_ms(fn, reps, cuda):
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]
