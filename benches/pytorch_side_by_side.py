#!/usr/bin/env python3
"""opcount's counted training step next to PyTorch's plain one, measured in one run.

For each shipped model (models/*.ron) and batch size, this alternates, round by round:
  - PyTorch's SGD step on the same layers, loss and batch: zero_grad, forward, loss,
    backward, step (float32, on PyTorch's default threads);
  - `opcount bench MODEL --batch B --format json`, which itself interleaves plain f32 and
    Counted<f32> steps and reports each side's median.
Each side's median over the rounds goes into the table. Both sides run with a learning rate
of 0, as `opcount bench` does, so that thousands of steps on one batch keep the weights
where they started; the step does the same operations.

It needs PyTorch, installed outside the repository (never in CI), for example:
    python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch numpy
    cargo build --release
    /work/venv-torch/bin/python benches/pytorch_side_by_side.py
Options: --models NAME,... --batches 1,32 --rounds 3 --opcount PATH (another build, e.g.
an older one, as a further column: --before PATH) --max-memory 16G (passed to opcount bench)
--torch-threads N (PyTorch's threads; its default otherwise).

The machine's load average is printed before and after: on a shared machine, PyTorch's
small steps in particular slow down by orders of magnitude when its threads wait for cores
that other processes hold, so compare runs made under similar load.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["mlp-30-30-30", "mnist-mlp", "iris", "xor", "lenet5", "vgg16"]


def read_model(path):
    """The input shape, layers and loss of a model file (the subset of RON it uses)."""
    text = re.sub(r"//[^\n]*", "", path.read_text())
    shape = [int(v) for v in re.search(r"input:\s*\[([^\]]*)\]", text).group(1).split(",")]
    body = re.search(r"layers:\s*\[(.*?)\n\s*\],", text, re.S).group(1)
    layers = []
    for kind, args in re.findall(r"(\w+)(?:\(([^)]*)\))?\s*,", body):
        fields = dict(re.findall(r"(\w+):\s*(\w+)", args or ""))
        layers.append((kind, fields))
    loss = re.search(r"loss:\s*(\w+)", text).group(1)
    return shape, layers, loss


def activation(name):
    table = {None: None, "Identity": None, "Relu": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid}
    if name not in table:
        sys.exit(f"unknown activation {name}")
    return table[name]


def build(shape, layers):
    """The PyTorch module for the layers, and the output shape."""
    modules, shape = [], list(shape)
    for kind, f in layers:
        if kind == "Dense":
            units = int(f["units"])
            modules.append(nn.Linear(shape[0], units, bias=f.get("bias", "true") == "true"))
            shape = [units]
        elif kind == "Conv2d":
            c, h, w = shape
            k, s, p = int(f["kernel"]), int(f.get("stride", 1)), int(f.get("padding", 0))
            out = int(f["out_channels"])
            modules.append(nn.Conv2d(c, out, k, s, p, bias=f.get("bias", "true") == "true"))
            shape = [out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1]
        elif kind in ("MaxPool2d", "AvgPool2d"):
            size = int(f["size"])
            stride = int(f.get("stride", size))
            pool = nn.MaxPool2d if kind == "MaxPool2d" else nn.AvgPool2d
            modules.append(pool(size, stride))
            c, h, w = shape
            shape = [c, (h - size) // stride + 1, (w - size) // stride + 1]
        elif kind == "Flatten":
            modules.append(nn.Flatten())
            shape = [int(torch.tensor(shape).prod())]
        else:
            sys.exit(f"unknown layer {kind}")
        act = activation(f.get("activation"))
        if act is not None:
            modules.append(act())
    return nn.Sequential(*modules), shape


def torch_step(name, batch):
    """A closure running one SGD step of the model at this batch, on made-up data."""
    shape, layers, loss_name = read_model(ROOT / "models" / f"{name}.ron")
    torch.manual_seed(1)
    model, out_shape = build(shape, layers)
    x = torch.rand(batch, *shape) * 2 - 1
    if loss_name == "Mse":
        loss_fn, y = nn.MSELoss(), torch.rand(batch, *out_shape)
    else:
        loss_fn, y = nn.CrossEntropyLoss(), torch.randint(0, out_shape[0], (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def time_round(step, target=0.3):
    """Median seconds per call of `step` over calls filling about `target` seconds."""
    step()
    start, calls = time.perf_counter(), 0
    times = []
    while calls < 3 or time.perf_counter() - start < target:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        calls += 1
    return statistics.median(times)


def opcount_bench(binary, name, batch, max_memory):
    cmd = [str(binary), "bench", str(ROOT / "models" / f"{name}.ron"), "--batch", str(batch)]
    cmd += ["--format", "json"]
    if max_memory:
        cmd += ["--max-memory", max_memory]
    if name == "vgg16":
        cmd += ["--rounds", "3" if batch == 1 else "1"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return None, run.stderr.strip().splitlines()[-1] if run.stderr else "failed"
    return json.loads(run.stdout), None


def duration(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:,.2f} ms"
    return f"{s * 1e6:,.1f} us"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opcount", default=str(ROOT / "target" / "release" / "opcount"))
    ap.add_argument("--before", help="an older opcount build, timed the same way")
    ap.add_argument("--max-memory", help="passed to opcount bench (e.g. 16G)")
    ap.add_argument("--torch-threads", type=int, help="PyTorch's threads (default: its own)")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()[0]
    binaries = [("after", Path(args.opcount))]
    if args.before:
        binaries.insert(0, ("before", Path(args.before)))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.rounds} rounds, alternating", file=sys.stderr)
    rows = []
    for name in args.models.split(","):
        for batch in [int(b) for b in args.batches.split(",")]:
            step = torch_step(name, batch)
            torch_s, results, errors = [], {label: [] for label, _ in binaries}, {}
            for r in range(args.rounds):
                order = binaries if r % 2 == 0 else binaries[::-1]
                torch_s.append(time_round(step, 0.3 if name != "vgg16" else 2.0))
                for label, binary in order:
                    result, error = opcount_bench(binary, name, batch, args.max_memory)
                    if result is None:
                        errors[label] = error
                    else:
                        results[label].append(result)
                print(f"  {name} batch {batch}: round {r + 1} done", file=sys.stderr)
            row = {"model": name, "batch": batch, "torch_s": statistics.median(torch_s)}
            for label, _ in binaries:
                got = results[label]
                med = lambda key: statistics.median(d[key] for d in got) if got else None
                row[label] = {
                    "plain_s": med("plain_s"),
                    "counted_s": med("counted_s"),
                    "ratio": med("ratio"),
                    "kernel_efficiency": med("kernel_efficiency"),
                    "error": errors.get(label),
                }
            rows.append(row)

    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"torch {torch.__version__} on {torch.get_num_threads()} threads; "
          f"median of {args.rounds} alternating rounds")
    print()
    head = "| model, batch | PyTorch plain |"
    rule = "|---|---:|"
    for label, _ in binaries:
        head += f" opcount counted ({label}) | counted/plain | vs PyTorch |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    for row in rows:
        line = f"| {row['model']}, {row['batch']} | {duration(row['torch_s'])} |"
        for label, _ in binaries:
            o = row[label]
            if o["counted_s"] is None:
                line += f" not run: {o['error']} | | |"
                continue
            speed = row["torch_s"] / o["counted_s"]
            verdict = f"{speed:.2f}x faster" if speed >= 1 else f"**{1 / speed:.2f}x slower**"
            line += f" {duration(o['counted_s'])} | {o['ratio']:.3f} | {verdict} |"
        print(line)
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
