#!/usr/bin/python3
"""PyTorch reference for dimx's golden-file tests (tests/test_golden.cpp).

Run from anywhere with Debian's PyTorch (python3-torch, CPU):

    /usr/bin/python3 tests/reference/make_golden.py

It rewrites two small files in tests/golden/ (a few KB each, committed, so the C++ tests need
no Python):

mlp.safetensors
    A small MLP, y = fc2(tanh(fc1(x))) with fc1 = Linear(5 -> 7) and fc2 = Linear(7 -> 3), on a
    batch of 4, and the mean squared error against a target. Keys:
      fc1.weight [7, 5], fc1.bias [7], fc2.weight [3, 7], fc2.bias [3]   initial parameters
                                                  (torch's default init, state_dict names)
      input [4, 5], target [4, 3], output [4, 3], loss []
      grad.<param>                                d loss / d param at the initial parameters
      clip.<param>, clip_total_norm []            those gradients after
                                                  clip_grad_norm_(max_norm=0.5), and its result
      <run>.<param>                               parameters after 5 steps of one optimizer,
                                                  each run starting from the initial parameters;
                                                  one step = zero_grad, forward, loss, backward,
                                                  step. Runs (hyper-parameters also in the
                                                  metadata under "<run>"):
        adamw5      AdamW(lr=1e-2, weight_decay=1e-2)
        adam5       Adam(lr=1e-2)
        adam_ams5   Adam(lr=1e-2, weight_decay=1e-2, amsgrad=True)
        sgd5        SGD(lr=0.1, momentum=0.9, weight_decay=1e-3)
        nesterov5   SGD(lr=0.1, momentum=0.9, nesterov=True)

linear_state.safetensors
    A torch.nn.Linear(6 -> 4) state_dict (weight [4, 6], bias [4]) exactly as saved from
    PyTorch, plus input [2, 3, 6] and torch's output [2, 3, 4] for it.

Everything is float32 (little-endian), made deterministic by a fixed seed, single-threaded
math and fixed metadata. There is no `safetensors` Python package on the system, so the
format is written here: an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the raw row-major bytes.
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "golden")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts"))
from convert_checkpoint import save_safetensors  # noqa: E402  (the one safetensors writer)

SEED = 20240611
IN, HIDDEN, OUT, BATCH = 5, 7, 3, 4
STEPS = 5

RUNS = {
    "adamw5": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2)),
    "adam5": (torch.optim.Adam, dict(lr=1e-2)),
    "adam_ams5": (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    "sgd5": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    "nesterov5": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(IN, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def loss_fn(model, x, target):
    return torch.nn.functional.mse_loss(model(x), target)


def make_mlp():
    torch.manual_seed(SEED)
    model = MLP()
    x = torch.randn(BATCH, IN)
    target = torch.randn(BATCH, OUT)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    out = {}
    out.update(initial)
    out["input"] = x
    out["target"] = target
    output = model(x)
    loss = torch.nn.functional.mse_loss(output, target)
    loss.backward()
    out["output"] = output
    out["loss"] = loss
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad.clone()

    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
    out["clip_total_norm"] = total
    for name, p in model.named_parameters():
        out["clip." + name] = p.grad.clone()

    metadata = {"seed": str(SEED), "steps": str(STEPS), "clip": "clip_grad_norm_(max_norm=0.5, norm_type=2)",
                "torch": torch.__version__.split("+")[0]}
    for run, (cls, kwargs) in RUNS.items():
        model.load_state_dict(initial)
        opt = cls(model.parameters(), **kwargs)
        for _ in range(STEPS):
            opt.zero_grad()
            loss_fn(model, x, target).backward()
            opt.step()
        for name, p in model.named_parameters():
            out[run + "." + name] = p.detach().clone()
        metadata[run] = cls.__name__ + "(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    save_safetensors(os.path.join(GOLDEN, "mlp.safetensors"), out, metadata)


def make_linear_state():
    torch.manual_seed(SEED + 1)
    lin = torch.nn.Linear(6, 4)
    x = torch.randn(2, 3, 6)
    with torch.no_grad():
        y = lin(x)
    tensors = dict(lin.state_dict())
    tensors["input"] = x
    tensors["output"] = y
    save_safetensors(os.path.join(GOLDEN, "linear_state.safetensors"), tensors,
                     {"module": "torch.nn.Linear(6, 4)", "torch": torch.__version__.split("+")[0]})


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(GOLDEN, exist_ok=True)
    make_mlp()
    make_linear_state()


if __name__ == "__main__":
    main()
