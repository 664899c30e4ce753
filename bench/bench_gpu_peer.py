"""PyTorch peer of bench_gpu: the same cases on the same GPU, timed with CUDA events.

Prints "case<TAB>median ms" per line; bench_gpu runs it as a subprocess and pairs the lines
with its own cases by name.
"""
import torch

from peer_timer import median_ms


def main():
    dev = "cuda"
    torch.manual_seed(0)
    for n in (4096, 8192):
        a = torch.randn(n, n, device=dev)
        b = torch.randn(n, n, device=dev)
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            ms = median_ms(lambda: a @ b, 10 if n == 8192 else 30, True)
            print(f"matmul {n}^3 {'tf32' if tf32 else 'f32'}\t{ms}")
        torch.backends.cuda.matmul.allow_tf32 = False
        ah, bh = a.bfloat16(), b.bfloat16()
        print(f"matmul {n}^3 bf16\t{median_ms(lambda: ah @ bh, 20 if n == 8192 else 50, True)}")
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.rand(256 << 20, device=dev)
    b = torch.rand(256 << 20, device=dev)
    print(f"add 256M f32\t{median_ms(lambda: a + b, 20, True)}")
    x = torch.randn(64, 1024, 1024, device=dev)
    print(f"softmax {{64,1024,1024}}\t{median_ms(lambda: torch.softmax(x, -1), 30, True)}")
    lens = torch.tensor([512 + 8 * i for i in range(64)], device=dev)
    mask = (torch.arange(1024, device=dev)[None, :] < lens[:, None])[:, :, None]
    print(f"masked reduce_sum over time {{64,<=1024,1024}}\t{median_ms(lambda: (x * mask).sum(1), 30, True)}")


if __name__ == "__main__":
    main()
