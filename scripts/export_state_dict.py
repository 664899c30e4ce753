#!/usr/bin/python3
"""Writes a PyTorch module's state_dict, or part of a checkpoint, as a safetensors file that
dimx's load_state reads by name.

    export_state_dict.py IN.pt OUT.safetensors [--prefix P] [--keep-prefix] [--key K] [--meta NAME=VALUE ...]

IN.pt is read with torch.load; a dict holding "model" or "state_dict" (or K, with --key) is
unwrapped. --prefix P keeps the entries whose names start with P and strips P from them, so a
layer of a larger model comes out under its module's own names (--keep-prefix keeps the full
names; dimx can then load with nn::StateOptions::prefix instead). Entries that are not tensors
(step counters, hyper-parameters) are skipped and listed on stderr.

The tensors are written as PyTorch stores them: row-major in the parameter's own shape
(nn.Linear's weight [out, in]), the layout in which load_state reads a parameter by default.
Tensors stored otherwise (RETURNN's [in, out] weights) need no conversion either: declare
their layout by Dims with nn::StateOptions::layouts. The metadata records "format": "pt",
"dimx_layout" (that convention), "source" and "prefix", plus any --meta entries.

From Python: export(module_or_state_dict, path, prefix="", keep_prefix=False, metadata=None)
does the same and returns the names written. Needs PyTorch (Debian: python3-torch).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_checkpoint import save_safetensors  # noqa: E402

LAYOUT_NOTE = "pytorch: each tensor row-major in its state_dict shape (nn.Linear weight [out, in])"


def _unwrap(obj, key=None):
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise KeyError(f"no entry {key!r} in the checkpoint (it has {sorted(obj) if isinstance(obj, dict) else type(obj)})")
        return _unwrap(obj[key])
    if isinstance(obj, dict):
        for k in ("model", "state_dict"):
            if k in obj and isinstance(obj[k], dict):
                return obj[k]
        return obj
    raise TypeError(f"expected a module, a state_dict or a checkpoint dict, got {type(obj)}")


def export(obj, path, prefix="", keep_prefix=False, metadata=None, key=None, source=""):
    """Writes the tensors of `obj` (module, state_dict or checkpoint dict) under `prefix`."""
    state = _unwrap(obj, key)
    tensors, skipped = {}, []
    for name, value in state.items():
        if not name.startswith(prefix):
            continue
        if not torch.is_tensor(value):
            skipped.append(name)
            continue
        tensors[name if keep_prefix else name[len(prefix):]] = value
    if not tensors:
        raise ValueError(f"no tensor under the prefix {prefix!r} (names start with: "
                         f"{sorted({n.split('.')[0] for n in state})})")
    if "" in tensors:
        raise ValueError(f"the prefix {prefix!r} is a whole tensor name; give the prefix of a module")
    for name in skipped:
        print(f"export_state_dict: skipped {name!r} (not a tensor)", file=sys.stderr)
    meta = {"format": "pt", "dimx_layout": LAYOUT_NOTE, "source": source, "prefix": prefix}
    meta.update(metadata or {})
    save_safetensors(path, tensors, meta)
    return sorted(tensors)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--prefix", default="")
    p.add_argument("--keep-prefix", action="store_true")
    p.add_argument("--key", default=None, help="the checkpoint entry that holds the state_dict")
    p.add_argument("--meta", action="append", default=[], metavar="NAME=VALUE")
    a = p.parse_args(argv)
    meta = {}
    for m in a.meta:
        if "=" not in m:
            p.error(f"--meta {m!r}: expected NAME=VALUE")
        k, v = m.split("=", 1)
        meta[k] = v
    obj = torch.load(a.input, map_location="cpu")
    names = export(obj, a.output, a.prefix, a.keep_prefix, meta, a.key, source=os.path.basename(a.input))
    print(f"export_state_dict: wrote {len(names)} tensors to {a.output}")


if __name__ == "__main__":
    main()
