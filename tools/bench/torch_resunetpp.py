#!/usr/bin/env python3
"""ResUNet++ in PyTorch, independent of resunetpp, as a parity check and a benchmark baseline.

The network follows the "ResUNet++ exactly" section of the architecture guide, with the module
paths as parameter names, so that `state_dict()` has the names, shapes and layouts (OIHW conv
weights) of a resunetpp checkpoint. resunetpp's extra `optim.*` tensors are dropped on loading.

Subcommands:
  parity      logits of `resunetpp predict --logits` against this model (eval mode, fp64 and fp32)
  train-step  one SGD step (momentum 0) of `resunetpp train` against the same step here in fp64:
              implied gradients (w_before - w_after) / lr and BN running statistics, per tensor;
              differences beyond fp32 rounding are tested for being ReLU / max-pool decisions
              that fp32 rounding flipped (inputs within 1e-5 of the kink), and nothing else
  bench       training images/s, inference latency (batch 1) and throughput (batch 32), peak
              device memory, for eager fp32 / eager AMP bf16 channels_last / torch.compile
  summary     parameter count and the state_dict names (no checkpoint needed)

Needs torch, safetensors and numpy. Images are read by a small built-in PNG reader (8-bit,
non-interlaced grey / grey+alpha / RGB / RGBA / palette), so PIL is not needed; other formats
are read with PIL when it is installed.
Exit codes: 0 pass, 1 a tolerance was exceeded, 2 usage or input error.
"""
import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FILTERS = (16, 32, 64, 128, 256)
EXPECTED_PARAMS = 4_062_993  # trainable scalars, architecture guide
EXPECTED_BN_STATS = 7_392    # running_mean + running_var scalars


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------

def conv(cin, cout, k, stride=1, dilation=1):
    """k x k convolution with bias and 'same'-style zero padding (k // 2) * dilation."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k // 2) * dilation, dilation=dilation, bias=True)


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 relu(W1 mean_hw(x))), reduction 8, no biases. Names attn.net.{0,2}.weight."""

    def __init__(self, c, reduction=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c, c // reduction, bias=False), nn.ReLU(),
                                 nn.Linear(c // reduction, c, bias=False), nn.Sigmoid())

    def forward(self, x):
        s = self.net(x.mean(dim=(2, 3)))
        return x * s[:, :, None, None]


class Stem(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.c1 = nn.Sequential(conv(cin, cout, 3), nn.BatchNorm2d(cout), nn.ReLU(), conv(cout, cout, 3))
        self.c2 = nn.Sequential(conv(cin, cout, 1), nn.BatchNorm2d(cout))
        self.attn = SqueezeExcite(cout)

    def forward(self, x):
        return self.attn(self.c1(x) + self.c2(x))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), conv(cin, cout, 3, stride),
                                nn.BatchNorm2d(cout), nn.ReLU(), conv(cout, cout, 3))
        self.c2 = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        self.attn = SqueezeExcite(cout)

    def forward(self, x):
        return self.attn(self.c1(x) + self.c2(x))


class ASPP(nn.Module):
    RATES = (1, 6, 12, 18)

    def __init__(self, cin, cout):
        super().__init__()
        for i, r in enumerate(self.RATES):
            setattr(self, f"c{i + 1}", nn.Sequential(conv(cin, cout, 3, dilation=r), nn.BatchNorm2d(cout)))
        self.c5 = conv(cout, cout, 1)

    def forward(self, x):
        return self.c5(self.c1(x) + self.c2(x) + self.c3(x) + self.c4(x))


class Attention(nn.Module):
    """g: encoder skip (C_g, 2H), x: decoder input (C_x, H). gc_conv(g_conv(g) + x_conv(x)) * x."""

    def __init__(self, cg, cx):
        super().__init__()
        self.g_conv = nn.Sequential(nn.BatchNorm2d(cg), nn.ReLU(), conv(cg, cx, 3), nn.MaxPool2d(2, 2))
        self.x_conv = nn.Sequential(nn.BatchNorm2d(cx), nn.ReLU(), conv(cx, cx, 3))
        self.gc_conv = nn.Sequential(nn.BatchNorm2d(cx), nn.ReLU(), conv(cx, cx, 3))

    def forward(self, g, x):
        return self.gc_conv(self.g_conv(g) + self.x_conv(x)) * x


class Decoder(nn.Module):
    def __init__(self, cg, cx, cout):
        super().__init__()
        self.a1 = Attention(cg, cx)
        self.r1 = ResBlock(cx + cg, cout, 1)

    def forward(self, g, x):
        d = F.interpolate(self.a1(g, x), scale_factor=2, mode="nearest")
        return self.r1(torch.cat([d, g], dim=1))


class ResUNetPP(nn.Module):
    def __init__(self, filters=FILTERS, in_channels=3):
        super().__init__()
        f = filters
        self.c1 = Stem(in_channels, f[0])
        self.c2 = ResBlock(f[0], f[1], 2)
        self.c3 = ResBlock(f[1], f[2], 2)
        self.c4 = ResBlock(f[2], f[3], 2)
        self.b1 = ASPP(f[3], f[4])
        self.d1 = Decoder(f[2], f[4], f[3])
        self.d2 = Decoder(f[1], f[3], f[2])
        self.d3 = Decoder(f[0], f[2], f[1])
        self.aspp = ASPP(f[1], f[0])
        self.output = conv(f[0], 1, 1)

    def forward(self, x):
        c1 = self.c1(x)
        c2 = self.c2(c1)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        b1 = self.b1(c4)
        d1 = self.d1(c3, b1)
        d2 = self.d2(c2, d1)
        d3 = self.d3(c1, d2)
        return self.output(self.aspp(d3))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# safetensors files: through the `safetensors` package when it is installed, else through the small
# reader/writer below (the format is an 8-byte little-endian header length, a JSON header with
# dtype, shape and data_offsets per tensor plus an optional __metadata__ map, then the raw data),
# so that a GPU server with PyTorch but without that package can still run everything.
_ST_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def st_load(path):
    """(dict name -> CPU tensor, metadata dict)."""
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError:
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
            data = fh.read()
        meta = header.pop("__metadata__", None) or {}
        tensors = {}
        for name, info in header.items():
            b, e = info["data_offsets"]
            t = torch.frombuffer(bytearray(data[b:e]), dtype=_ST_DTYPES[info["dtype"]]) if e > b else \
                torch.zeros(0, dtype=_ST_DTYPES[info["dtype"]])
            tensors[name] = t.reshape(info["shape"])
        return tensors, meta
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata() or {}
    return load_file(path), meta


def st_save(tensors, path):
    try:
        from safetensors.torch import save_file
    except ImportError:
        names = {v: k for k, v in _ST_DTYPES.items()}
        header, blobs, off = {}, [], 0
        for name in sorted(tensors):
            t = tensors[name].detach().contiguous().cpu()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
            blobs.append(raw)
            off += len(raw)
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", len(h)))
            fh.write(h)
            for raw in blobs:
                fh.write(raw)
        return
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def load_resunetpp_checkpoint(path, filters=None):
    """(model, tensors_without_optim, metadata). strict load; dtype stays float32."""
    all_tensors, meta = st_load(path)
    tensors = {k: v for k, v in all_tensors.items() if not k.startswith("optim.")}
    if filters is None:
        filters = tuple(int(v) for v in meta.get("filters", ",".join(map(str, FILTERS))).split(","))
    in_ch = int(meta.get("in_channels", "3"))
    model = ResUNetPP(filters, in_ch)
    model.load_state_dict(tensors, strict=True)
    return model, tensors, meta


# ----------------------------------------------------------------------------------------------
# Image reading and the preprocessing of resunetpp (images at the model size: no resize)
# ----------------------------------------------------------------------------------------------

def _png_unfilter(raw, w, h, bpp):
    stride = w * bpp
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    pos = 0
    for y in range(h):
        ftype = raw[pos]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += 1 + stride
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        elif ftype in (1, 3, 4):  # depend on the left neighbour: sequential in x
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                a = int(cur[x - bpp]) if x >= bpp else 0
                if ftype == 1:
                    pred = a
                elif ftype == 3:
                    pred = (a + int(prev[x])) >> 1
                else:
                    b = int(prev[x])
                    c = int(prev[x - bpp]) if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur[x] = (int(line[x]) + pred) & 0xFF
        else:
            raise ValueError(f"bad PNG filter type {ftype}")
        out[y] = cur
        prev = cur
    return out


def read_png(path):
    """uint8 array (H, W, C) of an 8-bit non-interlaced PNG (C = 1, 2, 3 or 4; palette -> 3)."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, palette = 8, [], None
    w = h = depth = ctype = interlace = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if depth != 8 or interlace != 0:
        raise ValueError(f"{path}: only 8-bit non-interlaced PNG is supported (depth {depth}, interlace {interlace})")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    px = _png_unfilter(zlib.decompress(b"".join(idat)), w, h, channels).reshape(h, w, channels)
    if ctype == 3:
        px = palette[px[:, :, 0]]
    return px


def read_image(path):
    if path.lower().endswith(".png"):
        return read_png(path)
    try:
        from PIL import Image
    except ImportError as ex:
        raise SystemExit(f"{path}: only PNG is read without PIL ({ex})")
    return np.asarray(Image.open(path))


def to_rgb(px):
    """stb_image's conversion to 3 channels: grey is replicated, alpha dropped."""
    if px.ndim == 2:
        px = px[:, :, None]
    c = px.shape[2]
    if c in (1, 2):
        return np.repeat(px[:, :, :1], 3, axis=2)
    return px[:, :, :3]


def to_grey(px):
    """stb_image's conversion to 1 channel: (77 r + 150 g + 29 b) >> 8 for colour input."""
    if px.ndim == 2:
        return px
    c = px.shape[2]
    if c in (1, 2):
        return px[:, :, 0]
    p = px.astype(np.int32)
    return ((p[:, :, 0] * 77 + p[:, :, 1] * 150 + p[:, :, 2] * 29) >> 8).astype(np.uint8)


def preprocess(px, size):
    """(3, size, size) float32 = byte / 255 (float32 division, as resunetpp). Needs size == image size."""
    rgb = to_rgb(px)
    if rgb.shape[0] != size or rgb.shape[1] != size:
        raise SystemExit(f"image is {rgb.shape[1]}x{rgb.shape[0]}, model size {size}: parity needs images at the "
                         "model size (no resize), e.g. `resunetpp synth --size SIZE`")
    x = rgb.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def mask_target(px, size):
    m = to_grey(px)
    if m.shape != (size, size):
        raise SystemExit(f"mask is {m.shape[1]}x{m.shape[0]}, model size {size}")
    return (m >= 128).astype(np.float32)[None]


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


# ----------------------------------------------------------------------------------------------
# Comparison helpers
# ----------------------------------------------------------------------------------------------

def diff_stats(ours, ref):
    """max abs, max abs / max|ref|, and the largest elementwise relative difference where |ref| is
    at least 1e-3 of max|ref| (elements near zero have no meaningful relative error)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    d = np.abs(ours - ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    big = np.abs(ref) >= 1e-3 * scale
    return {
        "max_abs": float(d.max()) if d.size else 0.0,
        "max_abs_over_max_ref": float(d.max() / scale) if scale > 0 else (0.0 if d.max() == 0 else math.inf),
        "max_elem_rel": float((d[big] / np.abs(ref[big])).max()) if big.any() else 0.0,
        "max_ref": scale,
    }


def fmt(x):
    return f"{x:.3e}"


# ----------------------------------------------------------------------------------------------
# parity
# ----------------------------------------------------------------------------------------------

def cmd_parity(a):
    torch.manual_seed(0)
    model, _, meta = load_resunetpp_checkpoint(a.checkpoint)
    size = a.size or int(meta.get("size", "256"))
    names = sorted(n for n in os.listdir(a.images) if n.lower().endswith(IMAGE_EXTS))
    if a.max_images:
        names = names[:a.max_images]
    if not names:
        raise SystemExit(f"no images in {a.images}")
    xs, ours = [], []
    for n in names:
        stem = os.path.splitext(n)[0]
        xs.append(preprocess(read_image(os.path.join(a.images, n)), size))
        lp = os.path.join(a.logits, stem + ".npy")
        if not os.path.exists(lp):
            raise SystemExit(f"{lp}: missing (run `resunetpp predict --logits` on {a.images})")
        ours.append(np.load(lp).astype(np.float64).reshape(size, size))
    x = torch.from_numpy(np.stack(xs))
    ours = np.stack(ours)
    model.eval()
    res = {}
    with torch.no_grad():
        m64 = copy.deepcopy(model).double().eval()
        t64 = m64(x.double())[:, 0].numpy()
        t32 = model.float().eval()(x.float())[:, 0].double().numpy()
    res["ours_fp32_vs_torch_fp64"] = diff_stats(ours, t64)
    res["ours_fp32_vs_torch_fp32"] = diff_stats(ours, t32)
    res["torch_fp32_vs_torch_fp64"] = diff_stats(t32, t64)
    # Agreement of the decisions (logit >= 0) too, for information.
    res["mask_pixels_differing_vs_fp64"] = int(np.sum((ours >= 0) != (t64 >= 0)))
    res["images"] = names
    res["size"] = size
    res["logit_range_fp64"] = [float(t64.min()), float(t64.max())]
    # The tolerance scales with the logits: fp32 rounding is relative, and a trained network's
    # eval-mode logits can be large (|logit| ~ 100 after a few steps with running statistics).
    allowed = a.tol * max(1.0, res["ours_fp32_vs_torch_fp64"]["max_ref"])
    ok = res["ours_fp32_vs_torch_fp64"]["max_abs"] <= allowed
    res["tolerance"] = {"rule": "max abs <= tol * max(1, max |logit|)", "tol": a.tol, "allowed_abs": allowed}
    res["pass"] = bool(ok)
    print(f"parity: {len(names)} images at {size}x{size}, logits in [{t64.min():.3f}, {t64.max():.3f}]")
    for k in ("ours_fp32_vs_torch_fp64", "ours_fp32_vs_torch_fp32", "torch_fp32_vs_torch_fp64"):
        s = res[k]
        print(f"  {k:26s} max abs {fmt(s['max_abs'])}  max abs / max|ref| {fmt(s['max_abs_over_max_ref'])}  "
              f"max elementwise rel {fmt(s['max_elem_rel'])}")
    print(f"  mask pixels differing (ours vs torch fp64): {res['mask_pixels_differing_vs_fp64']}")
    print(f"  tolerance: max abs <= {a.tol:g} * max(1, max|logit|) = {allowed:.3e} (ours fp32 vs torch fp64): "
          f"{'PASS' if ok else 'FAIL'}")
    if a.json:
        write_json(a.json, {"parity": res, "checkpoint": a.checkpoint, **environment()})
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------------
# Decisions at kinks: ReLU(x) at x ~ 0 and the argmax of a 2x2 max pool with a near tie. fp32
# rounding can take the other branch than fp64 does; the gradient then differs by a finite amount
# (one element's contribution), far above fp32 rounding. These modules compute the same function
# as nn.ReLU / nn.MaxPool2d(2) but let chosen decisions be flipped, to test whether the
# differences of resunetpp's fp32 step from PyTorch's fp64 step are such flips and nothing else.
# ----------------------------------------------------------------------------------------------

class FlippableReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.flip = None      # flat indices of elements whose decision (x > 0) is inverted
        self.record = False
        self.last = None

    def forward(self, x):
        if self.record:
            self.last = x.detach().clone()
        m = x > 0
        if self.flip is not None and len(self.flip):
            m = m.reshape(-1).clone()
            m[self.flip] = ~m[self.flip]
            m = m.reshape(x.shape)
        return x * m.to(x.dtype)


class FlippableMaxPool2(nn.Module):
    def __init__(self):
        super().__init__()
        self.flip = None      # flat window indices that take the runner-up instead of the maximum
        self.record = False
        self.last = None

    def forward(self, x):
        n, c, h, w = x.shape
        win = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
        order = torch.sort(win.detach(), dim=-1, descending=True, stable=True).indices
        idx = order[..., :1]
        if self.record:
            top2 = torch.gather(win.detach(), -1, order[..., :2])
            self.last = (top2[..., 0] - top2[..., 1]).clone()  # the gap of each window
        if self.flip is not None and len(self.flip):
            idx = idx.reshape(-1).clone()
            idx[self.flip] = order[..., 1].reshape(-1)[self.flip]
            idx = idx.reshape(n, c, h // 2, w // 2, 1)
        return torch.gather(win, -1, idx)[..., 0]


def flippable_copy(model):
    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(mod, cname, FlippableReLU())
            elif isinstance(child, nn.MaxPool2d):
                setattr(mod, cname, FlippableMaxPool2())
    return m


def kink_modules(m):
    return [(n, k) for n, k in m.named_modules() if isinstance(k, (FlippableReLU, FlippableMaxPool2))]


def near_kinks(m, delta, limit):
    """Decisions closer than delta (relative to the RMS of the layer's input) to their kink."""
    out = []
    for name, k in kink_modules(m):
        v = k.last.reshape(-1)
        if isinstance(k, FlippableReLU):
            scale = float(torch.sqrt(torch.mean(v * v)))
            margin = v.abs() / max(scale, 1e-300)
        else:
            # window gaps are relative to the RMS of the pooled values' scale
            scale = float(torch.sqrt(torch.mean(v * v))) or 1.0
            margin = v / scale
        idx = torch.nonzero(margin < delta).reshape(-1)
        for i in idx.tolist():
            out.append({"module": name, "kind": "relu" if isinstance(k, FlippableReLU) else "maxpool",
                        "index": int(i), "relative_margin": float(margin[i])})
    out.sort(key=lambda e: e["relative_margin"])
    return out[:limit]


def explain_by_flips(model, x, t, loss_kind, implied, ref_grads, weights, delta, limit, log):
    """Find the set of near-kink decision flips that best explains implied - ref (weighted), then
    recompute the fp64 gradient with exactly those flips. Returns (grads, chosen events, candidates)."""
    m = flippable_copy(model).double().train()
    xin, tin = torch.from_numpy(x).double(), torch.from_numpy(t).double()

    def grads_with(events, record=False):
        mm = copy.deepcopy(m)
        km = dict(kink_modules(mm))
        for k in km.values():
            k.flip, k.record = None, record
        by = {}
        for e in events:
            by.setdefault(e["module"], []).append(e["index"])
        for name, ids in by.items():
            km[name].flip = torch.tensor(ids, dtype=torch.long)
        mm.zero_grad(set_to_none=True)
        bce_dice_loss(mm(xin), tin, loss_kind).backward()
        g = {n: q.grad.detach().numpy() for n, q in mm.named_parameters()}
        return g, mm

    _, rec = grads_with([], record=True)
    cands = near_kinks(rec, delta, limit)
    log(f"  near-kink decisions (margin < {delta:g} of the layer RMS): {len(cands)}"
        + (f", closest {cands[0]['relative_margin']:.2e}" if cands else ""))
    names = [n for n in weights]

    def vec(d):
        return np.concatenate([(d[n].reshape(-1) * weights[n]).astype(np.float64) for n in names])

    r = vec({n: implied[n] - ref_grads[n] for n in names})
    deltas = []
    for e in cands:
        g, _ = grads_with([e])
        deltas.append(vec({n: g[n] - ref_grads[n] for n in names}).astype(np.float32))
    k = len(deltas)
    best = (float(r @ r), ())
    if k:
        D = np.stack(deltas).astype(np.float64)
        G = D @ D.T
        b = D @ r
        del D
        # ||r - sum_{e in S} delta_e||^2 = r.r - 2 sum_S b + sum_{S x S} G (flips taken as additive;
        # the final pass below recomputes the chosen set exactly). All subsets when few, else greedy.
        if k <= 16:
            masks = ((np.arange(1 << k)[:, None] >> np.arange(k)[None, :]) & 1).astype(np.float64)
            val = float(r @ r) - 2 * masks @ b + np.einsum("si,ij,sj->s", masks, G, masks)
            i = int(np.argmin(val))
            best = (float(val[i]), tuple(j for j in range(k) if masks[i, j]))
        else:
            chosen, cur = [], float(r @ r)
            while len(chosen) < k:
                trial = []
                for j in range(k):
                    if j not in chosen:
                        sv = np.zeros(k)
                        sv[chosen + [j]] = 1
                        trial.append((float(r @ r) - 2 * sv @ b + sv @ G @ sv, j))
                v, j = min(trial)
                if v >= cur:
                    break
                cur, chosen = v, chosen + [j]
            best = (cur, tuple(chosen))
    chosen = [cands[j] for j in best[1]]
    g, _ = grads_with(chosen)
    return g, chosen, cands


# ----------------------------------------------------------------------------------------------
# train-step
# ----------------------------------------------------------------------------------------------

def bce_dice_loss(logits, target, kind="bce+dice"):
    """resunetpp's losses: BCE with logits, mean over all pixels; soft Dice over the whole batch,
    smoothing 1: 1 - (2 sum(p t) + 1) / (sum p + sum t + 1), p = sigmoid(logit)."""
    loss = logits.new_zeros(())
    if kind in ("bce", "bce+dice"):
        loss = loss + F.binary_cross_entropy_with_logits(logits, target, reduction="mean")
    if kind in ("dice", "bce+dice"):
        p = torch.sigmoid(logits)
        loss = loss + 1.0 - (2.0 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return loss


def run_resunetpp_train(a, split_dir, out, lr, max_steps):
    cmd = [a.resunetpp, "train", "--data", a.data, "--split-dir", split_dir, "--out", out, "--overwrite",
           "--size", str(a.size), "--batch", str(a.batch), "--epochs", "1", "--optimizer", "sgd",
           "--momentum", "0", "--weight-decay", "0", "--lr", repr(lr), "--schedule", "constant",
           "--warmup", "0", "--augment", "none", "--no-shuffle", "--loss", a.loss, "--seed", "1",
           "--clip-grad", "0", "--weights", a.weights]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    print("running: " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"resunetpp train failed with exit code {r.returncode}")
    return cmd


def write_split(folder, train, val, test):
    os.makedirs(folder, exist_ok=True)
    for name, items in (("train", train), ("val", val), ("test", test)):
        with open(os.path.join(folder, name + ".txt"), "w") as fh:
            fh.write("".join(x + "\n" for x in items))


def compare_gradients(implied, ref, ref32, resolution, global_scale):
    """Per-tensor records of the implied gradient against a reference. Biases of convolutions
    followed by training-mode BatchNorm have an exactly zero gradient (the batch mean cancels
    them); they are judged against the largest gradient of the network instead."""
    recs = []
    for name, g in ref.items():
        s = diff_stats(implied[name], g)
        rec = {"tensor": name, "shape": list(g.shape), **s, "update_resolution": resolution[name],
               "norm_rel": float(np.linalg.norm(implied[name] - g) / max(np.linalg.norm(g), 1e-300))}
        if ref32 is not None:
            s32 = diff_stats(ref32[name], g)
            rec["torch_fp32_max_abs_over_max_ref"] = s32["max_abs_over_max_ref"]
            rec["torch_fp32_max_abs"] = s32["max_abs"]
        if float(np.abs(g).max()) <= 1e-9 * global_scale:
            rec["structurally_zero"] = True
            rec["max_abs_over_global_grad"] = s["max_abs"] / global_scale
            if ref32 is not None:
                rec["torch_fp32_max_abs_over_global_grad"] = rec["torch_fp32_max_abs"] / global_scale
        recs.append(rec)
    return recs


def worst_of(recs):
    nz = [r for r in recs if not r.get("structurally_zero")]
    z = [r for r in recs if r.get("structurally_zero")]
    w = max(nz, key=lambda r: r["max_abs_over_max_ref"]) if nz else None
    wz = max(z, key=lambda r: r["max_abs_over_global_grad"]) if z else None
    return w, wz


def print_gradient_table(recs, log, count=8):
    ranked = sorted((r for r in recs if not r.get("structurally_zero")), key=lambda r: -r["max_abs_over_max_ref"])
    for r in ranked[:count]:
        extra = ""
        if "torch_fp32_max_abs_over_max_ref" in r:
            extra = f"torch fp32 {fmt(r['torch_fp32_max_abs_over_max_ref'])}; "
        log(f"    {r['tensor']:32s} {fmt(r['max_abs_over_max_ref'])}  ({extra}norm rel {fmt(r['norm_rel'])}, "
            f"max|g| {fmt(r['max_ref'])})")


def cmd_train_step(a):
    torch.manual_seed(0)
    log = print
    stems = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(a.data, "images"))
                   if n.lower().endswith(IMAGE_EXTS))
    work = a.work
    os.makedirs(work, exist_ok=True)
    cmds = []
    loss_log = None
    if a.after:
        if not a.split_dir:
            raise SystemExit("--after needs --split-dir (the split of that run)")
        after_path = a.after
        train_stems = [s.strip() for s in open(os.path.join(a.split_dir, "train.txt")) if s.strip()][:a.batch]
        loss_log = os.path.join(os.path.dirname(after_path), "log.jsonl")
    else:
        if not a.resunetpp:
            raise SystemExit("train-step needs --resunetpp BIN (or --after CKPT with --split-dir)")
        if len(stems) < a.skip + 2 * a.batch + 1:
            raise SystemExit(f"{a.data}: need at least skip + 2 batch + 1 = {a.skip + 2 * a.batch + 1} images")
        # The step: a training split of two batches, --no-shuffle, --max-steps 1, so the run stops
        # inside its epoch after the first batch and saves checkpoint_last before any validation
        # (a large --lr would otherwise make the validation diverge). The first batch is
        # train.txt's first --batch stems, in order.
        first = a.skip
        train_stems = stems[first:first + a.batch]
        second = stems[first + a.batch:first + 2 * a.batch]
        rest = stems[:first] + stems[first + 2 * a.batch:]
        write_split(os.path.join(work, "splits_step"), train_stems + second, rest[:1], rest[1:])
        cmds.append(run_resunetpp_train(a, os.path.join(work, "splits_step"), os.path.join(work, "run_step"),
                                        a.lr, 1))
        after_path = os.path.join(work, "run_step", "checkpoint_last.safetensors")
        if a.check_loss:
            # The loss of the same batch: a one-batch epoch at a tiny lr writes it to log.jsonl.
            write_split(os.path.join(work, "splits_loss"), train_stems, rest[:1], rest[1:])
            cmds.append(run_resunetpp_train(a, os.path.join(work, "splits_loss"), os.path.join(work, "run_loss"),
                                            1e-9, 0))
            loss_log = os.path.join(work, "run_loss", "log.jsonl")
    if len(train_stems) != a.batch:
        raise SystemExit(f"train.txt has {len(train_stems)} stems, batch is {a.batch}: the step must see them all")

    def find(folder, stem):
        for e in IMAGE_EXTS:
            p = os.path.join(a.data, folder, stem + e)
            if os.path.exists(p):
                return p
        raise SystemExit(f"no {folder} file for {stem}")

    x = np.stack([preprocess(read_image(find("images", s)), a.size) for s in train_stems])
    t = np.stack([mask_target(read_image(find("masks", s)), a.size) for s in train_stems])

    before = {k: v for k, v in st_load(a.weights)[0].items() if not k.startswith("optim.")}
    after = {k: v for k, v in st_load(after_path)[0].items() if not k.startswith("optim.")}
    model, _, meta = load_resunetpp_checkpoint(a.weights)

    def torch_step(dtype):
        m = copy.deepcopy(model).to(dtype).train()
        m.zero_grad(set_to_none=True)
        lo = bce_dice_loss(m(torch.from_numpy(x).to(dtype)), torch.from_numpy(t).to(dtype), a.loss)
        lo.backward()
        return (lo.item(), {n: q.grad.detach().double().numpy() for n, q in m.named_parameters()},
                {n: b.detach().double().numpy() if b.is_floating_point() else b.detach().numpy()
                 for n, b in m.named_buffers()})

    # fp64 is the reference; fp32 PyTorch shows the size of plain fp32 effects on this step.
    t0 = time.perf_counter()
    loss, grads, buffers = torch_step(torch.float64)
    loss32, grads32, buffers32 = torch_step(torch.float32)

    # resunetpp's loss of this step: the epoch's mean training loss over its one step.
    ours_loss = None
    if loss_log and os.path.exists(loss_log):
        with open(loss_log) as fh:
            first_line = fh.readline()
        if first_line.strip():
            ours_loss = float(json.loads(first_line)["train_loss"])

    implied, resolution = {}, {}
    for name in grads:
        w0 = before[name].double().numpy()
        w1 = after[name].double().numpy()
        implied[name] = (w0 - w1) / a.lr
        # w1 = fl32(w0 - lr g): the implied gradient carries half an fp32 ulp of |w1|, over lr.
        resolution[name] = float((0.5 * np.spacing(np.abs(w1).astype(np.float32)).astype(np.float64)).max() / a.lr)
    global_scale = max(float(np.abs(g).max()) for g in grads.values())
    raw = compare_gradients(implied, grads, grads32, resolution, global_scale)
    worst_raw, worst_zero_raw = worst_of(raw)

    stats = []
    for name, b in buffers.items():
        if name.endswith("num_batches_tracked"):
            ok = int(after[name].item()) == int(b.item())
            stats.append({"tensor": name, "ours": int(after[name].item()), "torch": int(b.item()), "equal": ok})
            continue
        st = diff_stats(after[name].double().numpy(), b)
        stats.append({"tensor": name, **st,
                      "torch_fp32_max_abs_over_max_ref": diff_stats(buffers32[name], b)["max_abs_over_max_ref"]})
    worst_stat = max((r for r in stats if "max_abs_over_max_ref" in r), key=lambda r: r["max_abs_over_max_ref"])
    nbt_ok = all(r.get("equal", True) for r in stats)

    log(f"train-step: batch of {a.batch} at {a.size}x{a.size}, loss {a.loss}, SGD lr {a.lr:g} momentum 0, "
        f"images {', '.join(train_stems)}")
    log(f"  loss: torch fp64 {loss:.9f}, torch fp32 {loss32:.9f}, resunetpp "
        f"{f'{ours_loss:.9f}' if ours_loss is not None else 'n/a'}")
    nzero = sum(1 for r in raw if r.get("structurally_zero"))
    log(f"  largest |grad| {global_scale:.3e}; {len(raw)} parameter tensors, {nzero} with a structurally zero "
        f"gradient; implied-gradient resolution (fp32 weights / lr) <= {fmt(max(resolution.values()))}")
    log("  worst implied gradients vs PyTorch fp64, max |ours - torch| / max |torch| per tensor:")
    print_gradient_table(raw, log)

    # Decision flips at kinks (see FlippableReLU): find the near-kink decisions whose flips explain
    # the differences, and compare again against fp64 with exactly those flips.
    explained, worst_exp, worst_zero_exp, chosen, cands = None, None, None, [], []
    if a.explain_kinks:
        weights = {n: 1.0 / max(float(np.linalg.norm(g)), 1e-300) for n, g in grads.items()
                   if float(np.abs(g).max()) > 1e-9 * global_scale}
        g_flip, chosen, cands = explain_by_flips(model, x, t, a.loss, implied, grads, weights, a.kink_delta,
                                                 a.kink_limit, log)
        explained = compare_gradients(implied, g_flip, None, resolution, global_scale)
        worst_exp, worst_zero_exp = worst_of(explained)
        log(f"  best explanation: {len(chosen)} flipped decision(s): " +
            (", ".join(f"{e['module']}[{e['index']}] ({e['kind']}, margin {e['relative_margin']:.1e})"
                       for e in chosen) if chosen else "none"))
        log("  worst implied gradients vs PyTorch fp64 with those decisions:")
        print_gradient_table(explained, log, 5)

    def zero_line(wz, label):
        if wz:
            log(f"  structurally zero gradients ({label}): worst {wz['tensor']} max |ours| {fmt(wz['max_abs'])} = "
                f"{fmt(wz['max_abs_over_global_grad'])} of the largest |grad|")
    zero_line(worst_zero_raw, "vs fp64")
    z32 = max((r["torch_fp32_max_abs_over_global_grad"] for r in raw if r.get("structurally_zero")), default=0.0)
    log(f"    (torch fp32 on the same tensors: worst {fmt(z32)} of the largest |grad|)")
    log(f"  BN running stats after the step: worst {worst_stat['tensor']} max abs / max|ref| "
        f"{fmt(worst_stat['max_abs_over_max_ref'])} (max abs {fmt(worst_stat['max_abs'])}; torch fp32 worst "
        f"{fmt(max(r.get('torch_fp32_max_abs_over_max_ref', 0) for r in stats))}); "
        f"num_batches_tracked {'equal' if nbt_ok else 'DIFFERENT'}")

    final = worst_exp if explained is not None else worst_raw
    final_zero = worst_zero_exp if explained is not None else worst_zero_raw
    grad_ok = final is None or final["max_abs_over_max_ref"] <= a.tol_grad
    zero_ok = final_zero is None or final_zero["max_abs_over_global_grad"] <= a.tol_zero
    stat_ok = worst_stat["max_abs_over_max_ref"] <= a.tol_stats
    loss_ok = ours_loss is None or abs(ours_loss - loss) <= a.tol_loss * abs(loss)
    # a flip is only an admissible explanation at a decision that fp32 rounding can reach
    flips_ok = all(e["relative_margin"] < a.kink_delta for e in chosen)
    ok = grad_ok and zero_ok and stat_ok and nbt_ok and loss_ok and flips_ok
    log(f"  tolerances: gradient {a.tol_grad:g} of the tensor's max|g|"
        f"{' (after the flips)' if explained is not None else ''}, structurally zero {a.tol_zero:g} of the largest "
        f"|grad|, BN stats {a.tol_stats:g}, loss {a.tol_loss:g} relative: {'PASS' if ok else 'FAIL'}"
        f"  ({time.perf_counter() - t0:.1f} s in PyTorch)")
    if a.json:
        def slim(r):
            return None if r is None else {k: v for k, v in r.items()}
        write_json(a.json, {
            "train_step": {
                "commands": cmds, "batch": a.batch, "size": a.size, "lr": a.lr, "loss_kind": a.loss,
                "weights": a.weights, "train_stems": train_stems,
                "loss_torch_fp64": loss, "loss_torch_fp32": loss32, "loss_resunetpp": ours_loss,
                "largest_abs_grad": global_scale, "max_update_resolution": max(resolution.values()),
                "raw": {"worst_gradient": slim(worst_raw), "worst_structurally_zero_gradient": slim(worst_zero_raw)},
                "kink_analysis": None if explained is None else {
                    "delta": a.kink_delta, "candidates": cands, "flipped": chosen,
                    "worst_gradient": slim(worst_exp), "worst_structurally_zero_gradient": slim(worst_zero_exp),
                    "per_tensor_gradients": explained},
                "worst_bn_stat": worst_stat, "num_batches_tracked_equal": nbt_ok,
                "tolerances": {"grad": a.tol_grad, "zero": a.tol_zero, "stats": a.tol_stats, "loss": a.tol_loss},
                "pass": bool(ok),
                "per_tensor_gradients_raw": raw, "bn_stats": stats,
            }, **environment()})
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------

MODES = {
    # name: (channels_last, autocast dtype or None, compiled, allow TF32)
    "eager_fp32": (False, None, False, False),
    "eager_tf32": (False, None, False, True),
    "amp_bf16_cl": (True, torch.bfloat16, False, False),
    "compile_fp32": (False, None, True, False),
    "compile_bf16_cl": (True, torch.bfloat16, True, False),
}


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def time(self, fn, warmup, iters):
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        for _ in range(iters):
            if self.cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                out.append(s.elapsed_time(e) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return out

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def summarise(times):
    ts = sorted(times)
    return {"median_s": statistics.median(ts), "min_s": ts[0], "max_s": ts[-1], "mean_s": statistics.fmean(ts),
            "repeats": len(ts)}


def set_tf32(on):
    if hasattr(torch.backends, "cuda"):
        torch.backends.cuda.matmul.allow_tf32 = on
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.allow_tf32 = on


def bench_mode(mode, a, device, timer):
    cl, amp, compiled, tf32 = MODES[mode]
    set_tf32(tf32)
    torch.manual_seed(0)
    fmt_mem = torch.channels_last if cl else torch.contiguous_format
    if a.weights:
        model = load_resunetpp_checkpoint(a.weights)[0]
    else:
        model = ResUNetPP()
    model = model.to(device).to(memory_format=fmt_mem)
    res = {"channels_last": cl, "autocast": str(amp) if amp else None, "compiled": compiled, "tf32": tf32}
    cuda = device.type == "cuda"
    train_model, infer_model = model, model
    if compiled:
        train_model = torch.compile(model, mode=a.compile_mode, dynamic=False)
        infer_model = train_model
        res["compile_mode"] = a.compile_mode
    opt_kw = {"lr": 1e-3}
    if cuda:
        opt_kw["fused"] = True
    else:
        opt_kw["foreach"] = True
    opt = torch.optim.Adam(model.parameters(), **opt_kw)
    res["optimizer"] = "Adam " + ("fused" if cuda else "foreach") + " (eager)"

    def batch(n):
        g = torch.Generator().manual_seed(n)
        x = torch.rand(n, 3, a.size, a.size, generator=g).to(device).to(memory_format=fmt_mem)
        t = (torch.rand(n, 1, a.size, a.size, generator=g) > 0.7).float().to(device)
        return x, t

    def autocast():
        if amp is None:
            return torch.autocast(device_type=device.type, enabled=False)
        return torch.autocast(device_type=device.type, dtype=amp)

    x, t = batch(a.batch)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits = train_model(x)
        loss = bce_dice_loss(logits.float(), t)
        loss.backward()
        opt.step()

    def mem_reset():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def mem_peak():
        return torch.cuda.max_memory_allocated() if cuda else None

    model.train()
    t0 = time.perf_counter()
    train_step()  # first step (includes compilation)
    timer.sync()
    res["first_train_step_s"] = time.perf_counter() - t0
    mem_reset()
    tt = timer.time(train_step, a.warmup, a.iters)
    r = summarise(tt)
    r["images_per_s"] = a.batch / r["median_s"]
    r["batch"] = a.batch
    r["peak_memory_bytes"] = mem_peak()
    res["train"] = r

    model.eval()
    for label, n in (("infer_batch1", 1), (f"infer_batch{a.infer_batch}", a.infer_batch)):
        xi, _ = batch(n)

        def infer():
            with torch.no_grad(), autocast():
                infer_model(xi)
        t0 = time.perf_counter()
        infer()
        timer.sync()
        first = time.perf_counter() - t0
        mem_reset()
        ti = timer.time(infer, a.warmup, a.iters)
        r = summarise(ti)
        r["first_call_s"] = first
        r["batch"] = n
        r["latency_ms"] = r["median_s"] * 1e3
        r["images_per_s"] = n / r["median_s"]
        r["peak_memory_bytes"] = mem_peak()
        res[label] = r
    return res


def cmd_bench(a):
    device = torch.device(a.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device")
        torch.backends.cudnn.benchmark = True
    if a.threads:
        torch.set_num_threads(a.threads)
    timer = Timer(device)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode '{m}' (known: {', '.join(MODES)})")
    out = {"benchmark": "PyTorch ResUNet++ (tools/bench/torch_resunetpp.py)", **environment(device),
           "settings": {"device": a.device, "size": a.size, "batch": a.batch, "infer_batch": a.infer_batch,
                        "iters": a.iters, "warmup": a.warmup, "modes": modes, "compile_mode": a.compile_mode,
                        "loss": "bce+dice", "optimizer": "Adam lr 1e-3",
                        "weights": a.weights or "PyTorch default initialisation (seed 0)",
                        "cudnn_benchmark": device.type == "cuda", "threads": torch.get_num_threads(),
                        "data": "random tensors already on the device (no data loading)",
                        "timing": ("CUDA events around each repeat, synchronised" if device.type == "cuda"
                                   else "time.perf_counter around each repeat") + "; median of repeats"},
           "parameters": count_params(ResUNetPP()), "results": {}}
    if a.iters < 20:
        out["settings"]["note"] = f"only {a.iters} repeats: a smoke test, not a measurement (use --iters >= 20)"
    for m in modes:
        print(f"bench {m} ...", flush=True)
        try:
            r = bench_mode(m, a, device, timer)
            out["results"][m] = r
            tr = r["train"]
            line = f"  train {tr['images_per_s']:.2f} img/s (batch {a.batch})"
            line += f", infer batch 1 {r['infer_batch1']['latency_ms']:.2f} ms"
            ib = r[f"infer_batch{a.infer_batch}"]
            line += f", infer batch {a.infer_batch} {ib['images_per_s']:.2f} img/s"
            if tr["peak_memory_bytes"] is not None:
                line += f", train peak {tr['peak_memory_bytes'] / 2**20:.1f} MiB"
            print(line, flush=True)
        except Exception as ex:  # torch.compile may be unavailable (no compiler, unsupported backend)
            msg = f"{type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''}"
            out["results"][m] = {"skipped": True, "error": msg[:2000]}
            print(f"  skipped: {msg[:300]}", flush=True)
        finally:
            set_tf32(False)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if MODES[m][2]:
                try:
                    torch._dynamo.reset()
                except Exception:
                    pass
    if a.json:
        write_json(a.json, out)
        print(f"wrote {a.json}")
    return 0


# ----------------------------------------------------------------------------------------------

def environment(device=None):
    env = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    try:
        import safetensors
        env["safetensors"] = safetensors.__version__
    except Exception:
        pass
    env["cuda_build"] = torch.version.cuda
    if device is not None and device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cudnn"] = torch.backends.cudnn.version()
        p = torch.cuda.get_device_properties(device)
        env["device_memory_bytes"] = p.total_memory
        env["compute_capability"] = f"{p.major}.{p.minor}"
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        env["device_name"] = f"CPU: {name}"
        env["cudnn"] = None
    return env


def write_json(path, obj):
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def cmd_summary(a):
    m = ResUNetPP()
    sd = m.state_dict()
    n = count_params(m)
    stats = sum(v.numel() for k, v in sd.items() if "running_" in k)
    print(f"parameters {n} (expected {EXPECTED_PARAMS}), BN running statistics {stats} (expected {EXPECTED_BN_STATS}), "
          f"{len(sd)} state_dict tensors")
    if a.names:
        for k, v in sd.items():
            print(k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
    if a.save:
        if a.randomize is not None:
            # PyTorch's default initialisation, then BatchNorm parameters and statistics away from
            # their defaults, so that an eval-mode forward exercises all of them.
            torch.manual_seed(a.randomize)
            m = ResUNetPP()
            g = torch.Generator().manual_seed(a.randomize)
            with torch.no_grad():
                for mod in m.modules():
                    if isinstance(mod, nn.BatchNorm2d):
                        c = mod.num_features
                        mod.weight.copy_(0.5 + torch.rand(c, generator=g))
                        mod.bias.copy_(0.1 * torch.randn(c, generator=g))
                        mod.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                        mod.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                        mod.num_batches_tracked.fill_(7)
            sd = m.state_dict()
        st_save(sd, a.save)
        print(f"wrote {a.save} (PyTorch state_dict, no metadata)")
    return 0 if (n == EXPECTED_PARAMS and stats == EXPECTED_BN_STATS) else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("parity", help="compare logits of `resunetpp predict --logits` with PyTorch")
    s.add_argument("--checkpoint", required=True, help="resunetpp checkpoint (.safetensors)")
    s.add_argument("--images", required=True, help="folder of images at the model size")
    s.add_argument("--logits", required=True, help="folder of STEM.npy written by resunetpp predict --logits")
    s.add_argument("--size", type=int, default=0, help="model size (0: the checkpoint's metadata)")
    s.add_argument("--max-images", type=int, default=0, help="use only the first N images (sorted)")
    s.add_argument("--tol", type=float, default=1e-5,
                   help="max abs logit difference, ours (fp32) vs PyTorch fp64, relative to max(1, max|logit|) "
                        "(default 1e-5; PyTorch's own fp32 is ~1e-6 here)")
    s.add_argument("--json", help="write the results here")

    s = sub.add_parser("train-step", help="one SGD step of resunetpp train against PyTorch fp64")
    s.add_argument("--resunetpp", help="resunetpp binary (runs the training step)")
    s.add_argument("--data", required=True, help="dataset folder (images/, masks/) at --size")
    s.add_argument("--weights", required=True, help="initial checkpoint")
    s.add_argument("--work", required=True, help="work folder (split files, the run)")
    s.add_argument("--after", help="use this checkpoint after the step instead of running resunetpp (needs --split-dir)")
    s.add_argument("--split-dir", help="split folder of the --after run")
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--lr", type=float, default=1000.0,
                   help="SGD learning rate of the step (default 1000: large, so that w - lr g stored in fp32 "
                        "resolves even small gradients; the run stops before any forward pass with the new weights)")
    s.add_argument("--no-check-loss", dest="check_loss", action="store_false",
                   help="skip the second resunetpp run that reports the loss of the batch")
    s.add_argument("--loss", default="bce+dice", choices=("bce", "dice", "bce+dice"))
    s.add_argument("--skip", type=int, default=0, help="leave out the first N images (sorted) from the batch")
    s.add_argument("--tol-grad", type=float, default=1e-4,
                   help="max |implied - torch| / max|torch grad| per tensor (default 1e-4)")
    s.add_argument("--tol-zero", type=float, default=1e-4,
                   help="structurally zero gradients: max |implied| / largest |grad| (default 1e-4)")
    s.add_argument("--tol-stats", type=float, default=1e-5,
                   help="BN running statistics: max abs diff / max|value| per tensor (default 1e-5)")
    s.add_argument("--tol-loss", type=float, default=1e-6, help="relative loss difference (default 1e-6)")
    s.add_argument("--no-explain-kinks", dest="explain_kinks", action="store_false",
                   help="skip the search for flipped ReLU / max-pool decisions")
    s.add_argument("--kink-delta", type=float, default=1e-5,
                   help="decisions within this margin (relative to the layer RMS) may flip in fp32 (default 1e-5)")
    s.add_argument("--kink-limit", type=int, default=14, help="at most this many near-kink candidates (default 14)")
    s.add_argument("--json", help="write the results here")

    s = sub.add_parser("bench", help="PyTorch training/inference speed and memory")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--batch", type=int, default=16, help="training batch")
    s.add_argument("--infer-batch", type=int, default=32, help="inference throughput batch")
    s.add_argument("--iters", type=int, default=30, help="timed repeats (median reported; >= 20 for numbers)")
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--modes", default="eager_fp32,amp_bf16_cl,compile_fp32,compile_bf16_cl",
                   help=f"comma-separated, from: {', '.join(MODES)}")
    s.add_argument("--compile-mode", default="max-autotune")
    s.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    s.add_argument("--weights", help="start every mode from this resunetpp checkpoint (default: PyTorch's init)")
    s.add_argument("--json", help="write the results here")

    s = sub.add_parser("summary", help="parameter count and state_dict names")
    s.add_argument("--names", action="store_true")
    s.add_argument("--save", help="write a state_dict as safetensors")
    s.add_argument("--randomize", type=int, metavar="SEED",
                   help="with --save: seeded PyTorch init and random BatchNorm parameters and statistics")

    a = p.parse_args(argv)
    return {"parity": cmd_parity, "train-step": cmd_train_step, "bench": cmd_bench, "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as ex:
        if isinstance(ex.code, str):  # raise SystemExit("message"): a usage or input error
            sys.stderr.write(f"torch_resunetpp.py: {ex.code}\n")
            sys.exit(2)
        raise
    except OSError as ex:  # a missing or unreadable input file
        sys.stderr.write(f"torch_resunetpp.py: {ex}\n")
        sys.exit(2)
