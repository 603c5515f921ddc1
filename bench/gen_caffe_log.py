#!/usr/bin/env python3
# ruff: noqa: B007, E741, RUF023, SIM108, SIM201, UP031
"""Synthetic Caffe `debug_info: true` training-log generator (stdlib only).

Writes a glog-formatted log for a ResNet-50-shaped net (Kaiming He's Caffe
prototxt topology: 229 layers incl. in-place BatchNorm/Scale/ReLU, 160 of them
with parameters, 321 param blobs; 1281 log lines per iteration),
the way caffe::Net::ForwardDebugInfo / BackwardDebugInfo / UpdateDebugInfo
and caffe::Solver print it:

  per iteration:
    [Forward]  one line per top blob and per param blob of every layer
    [Backward] one line per bottom blob that needs backward and per param
               blob that propagates down (lr_mult != 0), last layer first
    [Backward] All net params (data, diff): L1 norm = (..); L2 norm = (..)
    solver.cpp  Iteration N (x iter/s, ys/K iters), loss = L   (display iters)
    solver.cpp      Train net output #0: loss = L (* 1 = L loss)
    sgd_solver.cpp  Iteration N, lr = LR
    [Update]   one line per learnable param blob (optional, --no-update)

Values are formatted like C++ ostream defaults (%g, 6 significant digits),
so small values come out as e.g. 5.99449e-06.  Values drift as a seeded
random walk in log space with per-kind trends (diffs shrink as the loss
falls, weights grow slowly).  --nan-at ITER:LAYER poisons LAYER's forward
output at iteration ITER; the NaN then propagates like in real Caffe
(downstream forward tops, every backward diff, the loss, norms, and after the
update every parameter), printed as "nan" / "-nan" as glibc does.

Deterministic for a given --seed and options.

Provenance: copied verbatim from ../shared/peer-bench/gen_caffe_log.py (the peer yardstick,
../shared/peer-bench/RESULTS.md; sha256 c6db54aad0aa5dd7ed763e5d02886f831185b31c70fdee6ff18e778156bcc70b)
so that bench/ runs without ../shared; only this paragraph and the ruff noqa line (vendored code kept as is) were added.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from typing import TextIO

# ---------------------------------------------------------------------------
# Network topology
# ---------------------------------------------------------------------------


class Layer:
    __slots__ = ("name", "type", "bottoms", "tops", "nparams", "param_lr",
                 "bottom_bw", "stage")

    def __init__(self, name: str, ltype: str, bottoms: list[str], tops: list[str], nparams: int = 0,
                 param_lr: bool = True, stage: int = 0) -> None:
        self.name = name
        self.type = ltype
        self.bottoms = bottoms
        self.tops = tops
        self.nparams = nparams
        # param_propagate_down: BatchNorm stats have lr_mult 0 in the
        # ResNet prototxts, so they print no [Backward] param lines.
        self.param_lr = param_lr
        self.bottom_bw = [True] * len(bottoms)
        self.stage = stage


def resnet50() -> list[Layer]:
    L: list[Layer] = []
    L.append(Layer("data", "Data", [], ["data", "label"]))
    L.append(Layer("conv1", "Convolution", ["data"], ["conv1"], 2, stage=1))
    L[-1].bottom_bw = [False]  # data needs no backward
    L.append(Layer("bn_conv1", "BatchNorm", ["conv1"], ["conv1"], 3, False, 1))
    L.append(Layer("scale_conv1", "Scale", ["conv1"], ["conv1"], 2, stage=1))
    L.append(Layer("conv1_relu", "ReLU", ["conv1"], ["conv1"], stage=1))
    L.append(Layer("pool1", "Pooling", ["conv1"], ["pool1"], stage=1))
    prev = "pool1"
    for stage, nblocks in ((2, 3), (3, 4), (4, 6), (5, 3)):
        for b in range(nblocks):
            blk = "%d%s" % (stage, "abcdef"[b])
            res = "res" + blk
            if b == 0:
                br1 = res + "_branch1"
                L.append(Layer(br1, "Convolution", [prev], [br1], 1, stage=stage))
                L.append(Layer("bn%s_branch1" % blk, "BatchNorm", [br1], [br1], 3, False, stage))
                L.append(Layer("scale%s_branch1" % blk, "Scale", [br1], [br1], 2, stage=stage))
                shortcut = br1
            else:
                shortcut = prev
            inp = prev
            for sub in ("2a", "2b", "2c"):
                c = "%s_branch%s" % (res, sub)
                L.append(Layer(c, "Convolution", [inp], [c], 1, stage=stage))
                L.append(Layer("bn%s_branch%s" % (blk, sub), "BatchNorm", [c], [c], 3, False, stage))
                L.append(Layer("scale%s_branch%s" % (blk, sub), "Scale", [c], [c], 2, stage=stage))
                if sub != "2c":
                    L.append(Layer(c + "_relu", "ReLU", [c], [c], stage=stage))
                inp = c
            L.append(Layer(res, "Eltwise", [shortcut, inp], [res], stage=stage))
            L.append(Layer(res + "_relu", "ReLU", [res], [res], stage=stage))
            prev = res
    L.append(Layer("pool5", "Pooling", [prev], ["pool5"], stage=6))
    L.append(Layer("fc1000", "InnerProduct", ["pool5"], ["fc1000"], 2, stage=6))
    L.append(Layer("loss", "SoftmaxWithLoss", ["fc1000", "label"], ["loss"], stage=7))
    L[-1].bottom_bw = [True, False]  # label needs no backward
    return L


# ---------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------


def fmt(v: float) -> str:
    """C++ ostream << float default formatting (6 significant digits)."""
    if v != v:
        return "nan"
    if v == math.inf:
        return "inf"
    if v == -math.inf:
        return "-inf"
    return "%g" % v


class Clock:
    """glog prefix: 'I1109 12:00:00.123456  1234 file:line] '."""

    def __init__(self, start: float, tid: int) -> None:
        self.t = start
        self.tid = tid
        self._sec: int | None = None
        self._sec_str = ""

    def advance(self, dt: float) -> None:
        self.t += dt

    def prefix(self, level: str, src: str) -> str:
        sec = int(self.t)
        if sec != self._sec:
            self._sec = sec
            self._sec_str = time.strftime("%m%d %H:%M:%S", time.gmtime(sec))
        us = int((self.t - sec) * 1e6)
        return "%s%s.%06d %5d %s] " % (level, self._sec_str, us, self.tid, src)


# ---------------------------------------------------------------------------
# Value model
# ---------------------------------------------------------------------------


class Walk:
    """Log-space random walk with a per-iteration trend."""
    __slots__ = ("logv", "trend", "sigma")

    def __init__(self, rng: random.Random, base: float, spread: float, trend: float, sigma: float) -> None:
        self.logv = math.log(base) + rng.gauss(0.0, spread)
        self.trend = trend
        self.sigma = sigma

    def step(self, rng: random.Random) -> float:
        self.logv += self.trend + rng.gauss(0.0, self.sigma)
        # keep within a plausible band
        if self.logv > 9.0:
            self.logv = 9.0
        elif self.logv < -18.0:
            self.logv = -18.0
        return math.exp(self.logv)


Walks = tuple[list["Walk"], list["Walk"], list["Walk"], list["Walk"]]  # top data, param data, param diff, bottom diff


def build_walks(layers: list[Layer], rng: random.Random) -> dict[str, Walks]:
    """One walk per printed quantity: (layer, kind) -> list of Walks."""
    W: dict[str, Walks] = {}
    for li, l in enumerate(layers):
        depth = li / float(len(layers))
        # forward top data magnitudes
        if l.type == "Data":
            top = [Walk(rng, 0.34, 0.05, 0.0, 0.002), Walk(rng, 499.0, 0.02, 0.0, 0.01)]
        elif l.type == "SoftmaxWithLoss":
            top = [Walk(rng, 6.9, 0.01, -0.0012, 0.004)]
        elif l.type == "BatchNorm":
            top = [Walk(rng, 0.8, 0.1, 0.0, 0.003)]
        else:
            top = [Walk(rng, 0.05 + 0.5 * depth, 0.3, 0.0, 0.004) for _ in l.tops]
        # param data (mean |w|) and diff (mean |dw|)
        pdata: list[Walk] = []
        pdiff: list[Walk] = []
        for p in range(l.nparams):
            if l.type == "BatchNorm":
                base = (0.3, 0.05, 999.982)[p]
                pdata.append(Walk(rng, base, 0.3 if p < 2 else 0.0, 0.0, 0.002 if p < 2 else 0.0))
                pdiff.append(Walk(rng, 1e-12, 0.0, 0.0, 0.0))
            elif l.type == "Scale":
                base = (1.0, 0.1)[p]
                pdata.append(Walk(rng, base, 0.3, 0.00002, 0.0005))
                pdiff.append(Walk(rng, 2e-4 * (1 + 5 * depth), 0.5, -0.0008, 0.03))
            else:  # Convolution / InnerProduct weights (p=0) and bias (p=1)
                base = 0.009 if p == 0 else 0.002
                pdata.append(Walk(rng, base, 0.4, 0.00003, 0.0003))
                pdiff.append(Walk(rng, 5e-5 * (1 + 10 * depth) if p == 0 else 1e-3, 0.7,
                                  -0.0008, 0.04))
        # bottom diffs (gradient wrt inputs) shrink with depth from loss
        bdiff = [Walk(rng, 1e-3 * (0.05 + depth) ** 2, 0.6, -0.0006, 0.03)
                 for _ in l.bottoms]
        if l.type == "SoftmaxWithLoss":
            bdiff[0] = Walk(rng, 0.0019, 0.05, -0.0006, 0.02)
        W[l.name] = (top, pdata, pdiff, bdiff)
    return W


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------


def preamble(layers: list[Layer], clock: Clock, w: Callable[[str], object]) -> None:
    """Net construction lines (not metrics; realistic noise for parsers)."""
    p = clock.prefix
    w(p("I", "caffe.cpp:218") + "Using GPUs 0\n")
    w(p("I", "caffe.cpp:223") + "GPU 0: Tesla V100-SXM2-16GB\n")
    w(p("I", "solver.cpp:44") + "Initializing solver from parameters: \n")
    for s in ("base_lr: 0.1", "display: 1", "max_iter: 600000", "lr_policy: \"step\"",
              "gamma: 0.1", "momentum: 0.9", "weight_decay: 0.0001", "stepsize: 150000",
              "snapshot: 10000", "snapshot_prefix: \"resnet50\"", "solver_mode: GPU",
              "debug_info: true", "net: \"ResNet-50-train.prototxt\""):
        w(s + "\n")
    w(p("I", "solver.cpp:87") + "Creating training net from net file: ResNet-50-train.prototxt\n")
    for l in layers:
        w(p("I", "layer_factory.hpp:77") + "Creating layer " + l.name + "\n")
        w(p("I", "net.cpp:84") + "Creating Layer " + l.name + "\n")
        for b in l.bottoms:
            w(p("I", "net.cpp:406") + "%s <- %s\n" % (l.name, b))
        for t in l.tops:
            if t in l.bottoms:
                w(p("I", "net.cpp:367") + "%s -> %s (in-place)\n" % (l.name, t))
            else:
                w(p("I", "net.cpp:380") + "%s -> %s\n" % (l.name, t))
        w(p("I", "net.cpp:122") + "Setting up " + l.name + "\n")
        for t in l.tops:
            w(p("I", "net.cpp:129") + "Top shape: 32 64 56 56 (6422528)\n")
        w(p("I", "net.cpp:137") + "Memory required for data: 1284505600\n")
        clock.advance(0.0007)
    w(p("I", "net.cpp:255") + "Network initialization done.\n")
    w(p("I", "solver.cpp:56") + "Solver scaffolding done.\n")
    w(p("I", "caffe.cpp:248") + "Starting Optimization\n")
    w(p("I", "solver.cpp:272") + "Solving ResNet-50\n")
    w(p("I", "solver.cpp:273") + "Learning Rate Policy: step\n")


def generate(args: argparse.Namespace, out: TextIO) -> tuple[int, int]:
    rng = random.Random(args.seed)
    layers = resnet50()
    names = [l.name for l in layers]
    nan_iter, nan_layer = None, None
    if args.nan_at:
        it_s, _, lname = args.nan_at.partition(":")
        nan_iter = int(it_s)
        nan_layer = lname
        if nan_layer not in names:
            sys.exit("--nan-at: unknown layer %r (try e.g. res3a_branch2b)" % nan_layer)
    nan_idx = names.index(nan_layer) if nan_layer else None

    W = build_walks(layers, rng)
    clock = Clock(args.start_time, args.tid)
    buf: list[str] = []
    w = buf.append
    nbytes = 0
    nlines = 0

    def flush() -> None:
        nonlocal nbytes, nlines
        s = "".join(buf)
        buf.clear()
        out.write(s)
        nbytes += len(s)
        nlines += s.count("\n")

    if not args.no_preamble:
        preamble(layers, clock, w)
        flush()

    NAN = float("nan")
    poisoned = False          # params already NaN (after a NaN update)
    learnable = [(l, p) for l in layers for p in range(l.nparams)]
    base_lr, gamma, stepsize = args.base_lr, 0.1, args.stepsize
    smoothed = None
    last_disp_t = clock.t
    dt_iter = 0.4
    nan_toggle = 0

    def nanstr() -> str:
        # glibc prints the sign of NaN; both forms show up in real logs
        nonlocal nan_toggle
        nan_toggle += 1
        return "-nan" if nan_toggle % 3 == 0 else "nan"

    for it in range(args.start_iter, args.start_iter + args.iterations):
        p = clock.prefix
        nan_now = poisoned or (nan_iter is not None and it == nan_iter)
        fwd_nan = False
        dt_line = dt_iter / 1300.0
        # ---------------- forward ----------------
        for li, l in enumerate(layers):
            top, pdata, pdiff, bdiff = W[l.name]
            if nan_now and (poisoned or li == nan_idx):
                fwd_nan = True
            pre = p("I", "net.cpp:608") + "    [Forward] Layer " + l.name + ", top blob "
            for ti, t in enumerate(l.tops):
                v = top[ti].step(rng)
                sval = nanstr() if (fwd_nan and not (l.type == "Data")) else fmt(v)
                w(pre + t + " data: " + sval + "\n")
            if l.nparams:
                pre = p("I", "net.cpp:620") + "    [Forward] Layer " + l.name + ", param blob "
                for pi in range(l.nparams):
                    v = pdata[pi].step(rng)
                    sval = nanstr() if poisoned else fmt(v)
                    w(pre + str(pi) + " data: " + sval + "\n")
            clock.advance(dt_line * (len(l.tops) + l.nparams))
            p = clock.prefix
        loss_v = math.exp(W["loss"][0][0].logv)
        if fwd_nan:
            loss_v = NAN
        # ---------------- backward ----------------
        l1_data = l1_diff = 0.0
        l2d = l2g = 0.0
        for li in range(len(layers) - 1, -1, -1):
            l = layers[li]
            if l.type == "Data":
                continue
            top, pdata, pdiff, bdiff = W[l.name]
            pre = p("I", "net.cpp:636") + "    [Backward] Layer " + l.name + ", bottom blob "
            for bi, b in enumerate(l.bottoms):
                if not l.bottom_bw[bi]:
                    continue
                v = bdiff[bi].step(rng)
                w(pre + b + " diff: " + (nanstr() if fwd_nan else fmt(v)) + "\n")
            if l.nparams:
                pre = p("I", "net.cpp:647") + "    [Backward] Layer " + l.name + ", param blob "
                for pi in range(l.nparams):
                    g = pdiff[pi].step(rng)
                    d = math.exp(pdata[pi].logv)
                    l1_data += d * 2.3e3
                    l1_diff += g * 2.3e3
                    l2d += (d * 48.0) ** 2
                    l2g += (g * 48.0) ** 2
                    if not l.param_lr:
                        continue
                    w(pre + str(pi) + " diff: " + (nanstr() if fwd_nan else fmt(g)) + "\n")
            clock.advance(dt_line * (len(l.bottoms) + l.nparams))
            p = clock.prefix
        if fwd_nan:
            norms = "L1 norm = (%s, %s); L2 norm = (%s, %s)" % (
                "nan" if poisoned else fmt(l1_data), "nan", "nan" if poisoned else fmt(math.sqrt(l2d)), "nan")
        else:
            norms = "L1 norm = (%s, %s); L2 norm = (%s, %s)" % (
                fmt(l1_data), fmt(l1_diff), fmt(math.sqrt(l2d)), fmt(math.sqrt(l2g)))
        w(p("I", "net.cpp:737") + "    [Backward] All net params (data, diff): " + norms + "\n")
        # ---------------- solver display ----------------
        if smoothed is None or loss_v != loss_v:
            smoothed = loss_v
        else:
            smoothed = 0.95 * smoothed + 0.05 * loss_v
        lr = base_lr * (gamma ** (it // stepsize))
        if it % args.display == 0:
            el = clock.t - last_disp_t
            last_disp_t = clock.t
            ips = args.display / el if el > 0 else 0.0
            w(p("I", "solver.cpp:218") + "Iteration %d (%s iter/s, %ss/%d iters), loss = %s\n" % (
                it, fmt(ips), fmt(round(el, 3)), args.display, fmt(smoothed)))
            w(p("I", "solver.cpp:237") + "    Train net output #0: loss = %s (* 1 = %s loss)\n" % (
                fmt(loss_v), fmt(loss_v)))
            w(p("I", "sgd_solver.cpp:105") + "Iteration %d, lr = %s\n" % (it, fmt(lr)))
        # ---------------- update ----------------
        if not args.no_update:
            for l, pi in learnable:
                pre = p("I", "net.cpp:658") + "    [Update] Layer " + l.name + ", param "
                d = math.exp(W[l.name][1][pi].logv)
                g = math.exp(W[l.name][2][pi].logv) if l.param_lr else 0.0
                if fwd_nan:
                    w(pre + "%d data: %s; diff: %s\n" % (pi, nanstr(), nanstr()))
                else:
                    w(pre + "%d data: %s; diff: %s\n" % (pi, fmt(d), fmt(g)))
                clock.advance(dt_line * 0.2)
                p = clock.prefix
        if fwd_nan:
            poisoned = True
        clock.advance(dt_iter * 0.05 + rng.random() * 0.01)
        if len(buf) > 20000:
            flush()
    flush()
    return nlines, nbytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=100,
                    help="number of training iterations to emit (default 100)")
    ap.add_argument("--out", default="-", help="output file ('-' = stdout)")
    ap.add_argument("--nan-at", metavar="ITER:LAYER", default=None,
                    help="inject NaN into LAYER's forward output at iteration ITER")
    ap.add_argument("--seed", type=int, default=1, help="RNG seed (default 1)")
    ap.add_argument("--start-iter", type=int, default=0)
    ap.add_argument("--display", type=int, default=1,
                    help="solver display interval (default 1)")
    ap.add_argument("--base-lr", type=float, default=0.1)
    ap.add_argument("--stepsize", type=int, default=150000)
    ap.add_argument("--no-update", action="store_true", help="omit [Update] lines")
    ap.add_argument("--no-preamble", action="store_true", help="omit net-setup lines")
    ap.add_argument("--start-time", type=float, default=1699531200.0,
                    help="epoch seconds of the first line (default 2023-11-09 12:00 UTC)")
    ap.add_argument("--tid", type=int, default=1234, help="thread id in glog prefix")
    ap.add_argument("--list-layers", action="store_true", help="print layer names and exit")
    args = ap.parse_args(argv)
    if args.list_layers:
        for l in resnet50():
            print(l.name, l.type, l.nparams)
        return 0
    t0 = time.perf_counter()
    if args.out == "-":
        nlines, nbytes = generate(args, sys.stdout)
    else:
        with open(args.out, "w", encoding="ascii", newline="\n") as f:
            nlines, nbytes = generate(args, f)
    el = time.perf_counter() - t0
    layers = resnet50()
    print("wrote %d lines, %d bytes (%.1f bytes/line) to %s in %.1fs; "
          "%d layers, %d with params, %d param blobs, %d iterations"
          % (nlines, nbytes, nbytes / max(nlines, 1), args.out, el, len(layers),
             sum(1 for l in layers if l.nparams), sum(l.nparams for l in layers),
             args.iterations), file=sys.stderr if args.out == "-" else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
