#!/usr/bin/env python3
"""Checks checkpoint interoperability with the reference `safetensors` library (numpy flavour).

1. Reads a resunetpp checkpoint with safetensors.numpy.load_file and prints its tensors.
2. Writes a state_dict the way PyTorch's safetensors would (no metadata, its own tensor order)
   with the same names and shapes but new values, for `resunetpp eval/predict/train --weights`
   to load.
3. Checks the values survive: the file written in step 2 is read back by resunetpp (the caller
   runs `resunetpp eval --checkpoint OUT ...`) and by safetensors again.

Usage: safetensors_roundtrip.py IN.safetensors OUT.safetensors
Needs: pip install safetensors numpy
"""
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def main() -> int:
    src, dst = sys.argv[1], sys.argv[2]
    tensors = load_file(src)
    with safe_open(src, framework="numpy") as f:
        meta = f.metadata() or {}
    print(f"{src}: {len(tensors)} tensors, metadata keys {sorted(meta)}")
    params = sum(v.size for k, v in tensors.items()
                 if v.dtype == np.float32 and "running_" not in k and not k.startswith("optim."))
    print(f"trainable parameters by name: {params}")
    conv = tensors["c1.c1.0.weight"]
    print(f"c1.c1.0.weight {conv.dtype} {conv.shape} (PyTorch OIHW: out, in, kh, kw)")
    assert conv.shape == (16, 3, 3, 3), conv.shape
    assert tensors["c1.c1.1.num_batches_tracked"].dtype == np.int64
    # A PyTorch-style file: sorted names (safetensors sorts by dtype and name), no metadata,
    # new values for every float tensor (deterministic), counters kept.
    rng = np.random.default_rng(0)
    out = {}
    for k in sorted(tensors, reverse=True):
        v = tensors[k]
        if k.startswith("optim."):
            continue
        if v.dtype == np.float32:
            if k.endswith("running_var"):
                out[k] = (rng.random(v.shape, dtype=np.float32) + 0.5).astype(np.float32)
            else:
                out[k] = (v * np.float32(0.5) + rng.standard_normal(v.shape, dtype=np.float32) * np.float32(0.01))
        else:
            out[k] = v.copy()
    save_file(out, dst)
    back = load_file(dst)
    for k, v in out.items():
        assert np.array_equal(back[k], v), k
    print(f"wrote {dst}: {len(out)} tensors without metadata")
    return 0


if __name__ == "__main__":
    sys.exit(main())
