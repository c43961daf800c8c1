#!/usr/bin/env python3
"""opcount's counted training step next to PyTorch's plain one, measured in one run.

For each shipped model (every models/*.ron, chains and graphs) and batch size, this
alternates, round by round:
  - PyTorch's step on the same network, loss, optimizer and batch: zero_grad, forward,
    loss, backward, step (float32, on PyTorch's default threads), with a module built by
    hand from the model file's layers or graph (no torchvision);
  - `opcount bench MODEL --batch B --format json`, which itself interleaves plain f32 and
    Counted<f32> steps and reports each side's median.
Each side's median over the rounds goes into the table. Both sides run with a learning rate
of 0, as `opcount bench` does, so that thousands of steps on one batch keep the weights
where they started; the step does the same operations. The optimizer is the model's
(`training: (optimizer: ...)`: SGD without one, or Adam with its betas and eps).

Before timing a model, the script checks that its PyTorch module has exactly as many
parameters as `opcount count MODEL --closed-form-only --format json` reports and that one
PyTorch step gives the output shape opcount's closed form gives; a mismatch stops the run
with a message (exit code 1). `--check-only` does only that, for every model, and exits.

Token models run at a shorter context where their input is long: gpt2-small's 1,024
tokens become 64 (or `--context N` for every token model); opcount is then given a
temporary copy of the model file with `input: [N]`, so both sides run the same step, and
the table says so.

It needs PyTorch, installed outside the repository (never in CI), for example:
    python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch numpy
    cargo build --release
    /work/venv-torch/bin/python benches/pytorch_side_by_side.py --check-only
    /work/venv-torch/bin/python benches/pytorch_side_by_side.py
Options: --models NAME,... (default: every models/*.ron) --batches 1,32 --rounds 3
--opcount PATH (another build, e.g. an older one, as a further column: --before PATH)
--max-memory 16G (passed to opcount bench, which otherwise refuses what needs more than
half the memory available; a refused row shows "-" and the reason, and PyTorch is not run
for it) --torch-threads N (PyTorch's threads; its default otherwise) --context N
--check-only.

The machine's load average is printed before and after: on a shared machine, PyTorch's
small steps in particular slow down by orders of magnitude when its threads wait for cores
that other processes hold, so compare runs made under similar load.
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
# Token models whose input is longer than this run at SHORT_CONTEXT tokens unless --context.
LONG_CONTEXT, SHORT_CONTEXT = 256, 64


# ---------------------------------------------------------------------------------------
# RON, the subset model files use: structs `Name(field: v, ...)`, anonymous structs
# `(field: v, ...)`, tuples `(a, b)`, unit variants `Name`, enum variants with values
# `Name(v, ...)`, lists, maps, strings, numbers, booleans, `//` and `/* */` comments.
# `Some(v)` is read as v (opcount reads RON with implicit_some).


class Variant:
    """`Name`, `Name(field: v, ...)` or `Name(v, ...)`."""

    def __init__(self, name, fields=None, items=None):
        self.name, self.fields, self.items = name, fields or {}, items or []

    def __repr__(self):
        return f"{self.name}({self.fields or self.items})"


class RonError(Exception):
    pass


class Ron:
    def __init__(self, text, path):
        self.s, self.i, self.path = text, 0, path

    def fail(self, what):
        line = self.s.count("\n", 0, self.i) + 1
        col = self.i - (self.s.rfind("\n", 0, self.i) + 1) + 1
        raise RonError(f"{self.path}:{line}:{col}: {what}")

    def skip(self):
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif self.s.startswith("//", self.i):
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end + 1
            elif self.s.startswith("/*", self.i):
                end = self.s.find("*/", self.i + 2)
                if end < 0:
                    self.fail("unterminated comment")
                self.i = end + 2
            else:
                break

    def peek(self):
        self.skip()
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, c):
        if self.peek() != c:
            self.fail(f"expected `{c}`, found `{self.peek() or 'end of file'}`")
        self.i += 1

    def ident(self):
        self.skip()
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(self.s, self.i)
        if not m:
            self.fail("expected a name")
        self.i = m.end()
        return m.group()

    def document(self):
        v = self.value()
        if self.peek():
            self.fail("unexpected text after the value")
        return v

    def value(self):
        c = self.peek()
        if c == "(":
            return self.parens(None)
        if c == "[":
            return self.seq("[", "]")
        if c == "{":
            return self.map()
        if c == '"':
            return self.string()
        if c and (c.isdigit() or c in "+-."):
            return self.number()
        if c and (c.isalpha() or c == "_"):
            name = self.ident()
            if name == "true":
                return True
            if name == "false":
                return False
            if self.peek() == "(":
                v = self.parens(name)
                if name == "Some" and isinstance(v, Variant) and len(v.items) == 1:
                    return v.items[0]
                return v
            return Variant(name)
        self.fail(f"expected a value, found `{c or 'end of file'}`")

    def parens(self, name):
        """`(field: v, ...)` or `(v, ...)`, after an optional variant name."""
        self.expect("(")
        save = self.i
        fields, items = {}, []
        named = False
        if self.peek() != ")":
            m = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:(?!:)").match(self.s, self.i)
            named = m is not None
            self.i = save
        while self.peek() != ")":
            if named:
                key = self.ident()
                self.expect(":")
                if key in fields:
                    self.fail(f"field `{key}` given twice")
                fields[key] = self.value()
            else:
                items.append(self.value())
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != ")":
                self.fail(f"expected `,` or `)`, found `{self.peek() or 'end of file'}`")
        self.i += 1
        if name is None:
            return fields if named or not items else tuple(items)
        return Variant(name, fields, items)

    def seq(self, open_, close):
        self.expect(open_)
        out = []
        while self.peek() != close:
            out.append(self.value())
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != close:
                self.fail(f"expected `,` or `{close}`, found `{self.peek() or 'end of file'}`")
        self.i += 1
        return out

    def map(self):
        self.expect("{")
        out = {}
        while self.peek() != "}":
            key = self.value()
            self.expect(":")
            out[key] = self.value()
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != "}":
                self.fail(f"expected `,` or `}}`, found `{self.peek() or 'end of file'}`")
        self.i += 1
        return out

    def string(self):
        self.expect('"')
        out = []
        escapes = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
        while True:
            if self.i >= len(self.s):
                self.fail("unterminated string")
            c = self.s[self.i]
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                e = self.s[self.i : self.i + 1]
                self.i += 1
                if e in escapes:
                    out.append(escapes[e])
                elif e == "u":
                    m = re.compile(r"\{([0-9A-Fa-f]{1,6})\}").match(self.s, self.i)
                    if not m:
                        self.fail("bad \\u escape")
                    out.append(chr(int(m.group(1), 16)))
                    self.i = m.end()
                else:
                    self.fail(f"unknown escape `\\{e}`")
            else:
                out.append(c)

    def number(self):
        self.skip()
        m = re.compile(r"[+-]?(\d[\d_]*)?(\.\d[\d_]*)?([eE][+-]?\d+)?").match(self.s, self.i)
        text = m.group() if m else ""
        if not re.search(r"\d", text):
            self.fail("expected a number")
        self.i = m.end()
        text = text.replace("_", "")
        return float(text) if re.search(r"[.eE]", text) else int(text)


def parse_ron(path):
    return Ron(Path(path).read_text(), path).document()


# ---------------------------------------------------------------------------------------
# The model: a list of nodes (name, op, fields, inputs, share); a chain becomes the graph
# whose every node reads the one before. A declared activation becomes a node of its own,
# and reading the layer's name reads the activation's output.

ACTIVATIONS = ("Identity", "Sigmoid", "Tanh", "Relu", "Softmax", "Relu6", "Gelu")


class Model:
    def __init__(self, path, context=None):
        doc = parse_ron(path)
        if not isinstance(doc, dict):
            sys.exit(f"{path}: expected a model struct `(name: ..., ...)`")
        self.path = Path(path)
        self.name = doc.get("name", self.path.stem)
        self.input = [int(v) for v in doc["input"]]
        self.context = None
        if context is not None and len(self.input) == 1 and self.reads_tokens(doc):
            self.input, self.context = [context], context
        self.loss = doc["loss"].name
        opt = (doc.get("training") or {}).get("optimizer")
        self.optimizer = opt if isinstance(opt, Variant) else Variant("Sgd")
        self.nodes = self.graph_nodes(doc)

    @staticmethod
    def reads_tokens(doc):
        layers = doc.get("graph") or [{"op": layer} for layer in doc.get("layers", [])]
        return any(isinstance(n.get("op"), Variant) and n["op"].name == "Embedding" for n in layers)

    def graph_nodes(self, doc):
        if ("layers" in doc) == ("graph" in doc):
            sys.exit(f"{self.path}: give `layers` or `graph`")
        raw = doc.get("graph") or [{"op": layer} for layer in doc["layers"]]
        counts, nodes, alias, prev = {}, [], {}, "input"
        default_names = {"MaxPool2d": "maxpool", "AvgPool2d": "avgpool",
                         "GlobalAvgPool2d": "globalavgpool", "PositionEmbedding": "positions",
                         "CausalSoftmax": "causal_softmax", "Conv2d": "conv"}
        for index, n in enumerate(raw):
            op = n["op"]
            kind = op.name
            counts[kind] = counts.get(kind, 0) + 1
            default = f"{default_names.get(kind, kind.lower())}{counts[kind]}"
            name = n.get("name") or op.fields.get("name") or default
            inputs = n.get("inputs") or [prev]
            node = {"index": index, "name": name, "kind": kind, "f": op.fields,
                    "inputs": list(inputs), "share": n.get("share")}
            nodes.append(node)
            act = op.fields.get("activation")
            if isinstance(act, Variant) and kind in ("Dense", "Conv2d"):
                nodes.append({"index": index, "name": f"{name}.{act.name.lower()}",
                              "kind": act.name, "f": {}, "inputs": [name], "share": None,
                              "inner": True})
                alias[name] = nodes[-1]["name"]
            prev = name
        # Readers of a layer with an activation read the activation's output.
        for node in nodes:
            if not node.get("inner"):
                node["inputs"] = [alias.get(i, i) for i in node["inputs"]]
        # The last node in the file is the output (its activation's, if it declares one).
        self.output = alias.get(prev, prev)
        return self.topological(nodes)

    def topological(self, nodes):
        """The file's order where it can be, every node after what it reads."""
        done, order, pending = {"input"}, [], list(nodes)
        names = {n["name"] for n in nodes}
        for n in nodes:
            for i in n["inputs"]:
                if i not in names and i != "input":
                    sys.exit(f"{self.path}: node {n['index']} ({n['name']}): no node `{i}`")
        while pending:
            for k, n in enumerate(pending):
                if all(i in done for i in n["inputs"]):
                    order.append(n)
                    done.add(n["name"])
                    del pending[k]
                    break
            else:
                sys.exit(f"{self.path}: the graph has a cycle")
        return order


def pair(v):
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


class Graph(nn.Module):
    """The model's network in PyTorch, evaluated node by node in the model's order."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.mods = nn.ModuleDict()
        self.plan = []  # (name, kind, fields, inputs, module key or None)
        shapes = {"input": list(model.input)}
        owners = {}
        for n in model.nodes:
            kind, f, name = n["kind"], n["f"], n["name"]
            ins = [shapes[i] for i in n["inputs"]]
            where = f"{model.path}: node {n['index']} ({name})"
            key = f"m{len(self.plan)}"
            mod, out = None, None
            x = ins[0]
            share = owners.get(n["share"]) if n["share"] else None
            if n["share"] and share is None:
                sys.exit(f"{where}: shares `{n['share']}`, which has no parameters before it")
            if kind == "Dense":
                units = int(f["units"])
                if len(x) not in (1, 2):
                    sys.exit(f"{where}: Dense on a value of shape {x}")
                mod = share or nn.Linear(x[-1], units, bias=f.get("bias", True))
                if share is not None and tuple(share.weight.shape) != (units, x[-1]):
                    sys.exit(f"{where}: shared weights {tuple(share.weight.shape)} do not fit")
                out = x[:-1] + [units]
            elif kind == "Conv2d":
                c, h, w = x
                k, s, p = pair(f["kernel"]), pair(f.get("stride", 1)), pair(f.get("padding", 0))
                oc, g = int(f["out_channels"]), int(f.get("groups", 1))
                mod = share or nn.Conv2d(c, oc, k, s, p, groups=g, bias=f.get("bias", True))
                out = [oc, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1]
            elif kind in ("MaxPool2d", "AvgPool2d"):
                size = int(f["size"])
                stride, pad = int(f.get("stride", size)), int(f.get("padding", 0))
                if kind == "MaxPool2d":
                    mod = nn.MaxPool2d(size, stride, pad)
                else:  # the padding's zeros are in the sum, the mean divides by size^2
                    mod = nn.AvgPool2d(size, stride, pad, count_include_pad=True)
                c, h, w = x
                out = [c, (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1]
            elif kind == "GlobalAvgPool2d":
                out = [x[0]]
            elif kind == "Flatten":
                out = [math.prod(x)]
            elif kind == "BatchNorm2d":
                mod = share or nn.BatchNorm2d(x[0], eps=1e-5, momentum=0.1)
                out = x
            elif kind == "LayerNorm":
                mod = share or nn.LayerNorm(x[-1], eps=1e-5)
                out = x
            elif kind == "Embedding":
                mod = share or nn.Embedding(int(f["vocab"]), int(f["width"]))
                out = x + [int(f["width"])]
            elif kind == "PositionEmbedding":
                mod = share or Table(int(f["context"]), x[-1])
                if x[0] > int(f["context"]):
                    sys.exit(f"{where}: {x[0]} tokens, context {f['context']}")
                out = x
            elif kind == "Unembed":
                vocab = int(f["vocab"])
                mod = share or Table(vocab, x[-1])
                table = mod.weight
                if tuple(table.shape) != (vocab, x[-1]):
                    sys.exit(f"{where}: table {tuple(table.shape)} does not fit")
                out = x[:-1] + [vocab]
            elif kind == "Scores":
                q, k = ins
                out = [int(f["heads"]), q[0], k[0]]
            elif kind == "CausalSoftmax":
                out = x
            elif kind == "Mix":
                p, v = ins
                out = [p[1], v[1]]
            elif kind == "Add":
                if ins[0] != ins[1]:
                    sys.exit(f"{where}: Add of {ins[0]} and {ins[1]}")
                out = x
            elif kind in ACTIVATIONS:
                out = x
            else:
                sys.exit(f"{where}: unknown operation {kind}")
            if mod is not None:
                if share is None:
                    self.mods[key] = mod
                else:
                    key = next(k2 for k2, m in self.mods.items() if m is share)
                if kind not in ("MaxPool2d", "AvgPool2d"):
                    owners[name] = mod
            self.plan.append((name, kind, f, n["inputs"], key if mod is not None else None))
            shapes[name] = out
        self.out_shape = shapes[model.output]
        self.record = None  # node name -> output shape, when asked for (the check)

    def forward(self, x):
        values = {"input": x}
        for name, kind, f, inputs, key in self.plan:
            a = values[inputs[0]]
            mod = self.mods[key] if key is not None else None
            if kind in ("Dense", "Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm2d",
                        "LayerNorm", "Embedding"):
                y = mod(a)
            elif kind == "GlobalAvgPool2d":
                y = a.mean(dim=(2, 3))
            elif kind == "Flatten":
                y = a.flatten(1)
            elif kind == "PositionEmbedding":
                y = a + mod.weight[: a.shape[1]]
            elif kind == "Unembed":
                y = a @ mod.weight.t()
            elif kind == "Scores":
                b = values[inputs[1]]
                heads = int(f["heads"])
                q = a.unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, H, T, d]
                k = b.unflatten(-1, (heads, -1)).transpose(1, 2)
                s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
                t = s.shape[-1]
                mask = torch.ones(t, t, dtype=torch.bool).triu(1)
                y = s.masked_fill(mask, float("-inf"))
            elif kind == "CausalSoftmax":
                t = a.shape[-1]
                mask = torch.ones(t, t, dtype=torch.bool).triu(1)
                y = torch.softmax(a.masked_fill(mask, float("-inf")), dim=-1)
            elif kind == "Mix":
                v = values[inputs[1]]
                heads = int(f["heads"])
                vh = v.unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, H, T, d]
                y = (a @ vh).transpose(1, 2).flatten(2)
            elif kind == "Add":
                y = a + values[inputs[1]]
            elif kind == "Relu":
                y = F.relu(a)
            elif kind == "Relu6":
                y = F.relu6(a)
            elif kind == "Tanh":
                y = torch.tanh(a)
            elif kind == "Sigmoid":
                y = torch.sigmoid(a)
            elif kind == "Gelu":
                y = F.gelu(a, approximate="tanh")
            elif kind == "Softmax":
                y = torch.softmax(a, dim=-1)
            elif kind == "Identity":
                y = a
            values[name] = y
            if self.record is not None:
                self.record[name] = list(y.shape)
        return values[self.model.output]


class Table(nn.Module):
    """A learned table (`PositionEmbedding`'s, an untied `Unembed`'s), PyTorch's order."""

    def __init__(self, rows, width):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rows, width) * 0.02)


def load(name, context):
    """The model of models/NAME.ron, with its context shortened where asked (or needed)."""
    path = ROOT / "models" / f"{name}.ron"
    doc_input = Model(path).input
    if context is None and len(doc_input) == 1 and doc_input[0] > LONG_CONTEXT:
        context = SHORT_CONTEXT
    return Model(path, context)


def opcount_model_file(model, tmpdir):
    """The model file opcount reads: the shipped one, or a copy with the shorter input."""
    if model.context is None:
        return model.path
    text = model.path.read_text()
    text, n = re.subn(r"input:\s*\[\s*\d+\s*\]", f"input: [{model.context}]", text, count=1)
    if n != 1:
        sys.exit(f"{model.path}: cannot find its `input: [N]` to shorten")
    # Data paths are relative to the model file: make them absolute in the copy.
    base = model.path.parent
    text = re.sub(r'path:\s*"([^"]*)"',
                  lambda m: f'path: {json.dumps(str((base / m.group(1)).resolve()))}', text)
    out = Path(tmpdir) / f"{model.path.stem}-context{model.context}.ron"
    out.write_text(text)
    return out


def torch_setup(model, batch):
    """The PyTorch module and a closure running one step of it at this batch, on made-up data."""
    torch.manual_seed(1)
    net = Graph(model)
    net.train()
    tokens = [n for n in model.nodes if n["kind"] == "Embedding" and "input" in n["inputs"]]
    if tokens:
        vocab = min(int(n["f"]["vocab"]) for n in tokens)
        x = torch.randint(0, vocab, (batch, *model.input))
    else:
        x = torch.rand(batch, *model.input) * 2 - 1
    out_shape = net.out_shape
    if model.loss == "Mse":
        y = torch.rand(batch, *out_shape)
        loss_fn = nn.MSELoss()
    elif model.loss in ("SoftmaxCrossEntropy", "CrossEntropy"):
        classes = out_shape[-1]
        y = torch.randint(0, classes, (batch, *out_shape[:-1])).flatten()
        ce = nn.CrossEntropyLoss()
        loss_fn = lambda out, target: ce(out.reshape(-1, classes), target)
    else:
        sys.exit(f"{model.path}: unknown loss {model.loss}")
    opt = model.optimizer
    if opt.name == "Sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    elif opt.name == "Adam":
        betas = (float(opt.fields.get("beta1", 0.9)), float(opt.fields.get("beta2", 0.999)))
        optimizer = torch.optim.Adam(net.parameters(), lr=0.0, betas=betas,
                                     eps=float(opt.fields.get("eps", 1e-8)))
    else:
        sys.exit(f"{model.path}: unknown optimizer {opt.name}")
    holder = {}

    def step():
        optimizer.zero_grad()
        out = net(x)
        loss = loss_fn(out, y)
        loss.backward()
        optimizer.step()
        holder["out"] = out

    return net, step, holder


def opcount_count(binary, path):
    cmd = [str(binary), "count", str(path), "--closed-form-only", "--format", "json"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {run.stderr.strip()}")
    return json.loads(run.stdout)


def opcount_shapes(report):
    """Each node's output shape (one example) in opcount's report, by node name."""
    return {layer["name"]: [int(v) for v in str(layer["output"]).split("x")]
            for layer in report["layers"]}


def check(model, binary, opcount_path):
    """PyTorch's parameters and every node's output shape against opcount's; exits on a
    mismatch."""
    net, step, holder = torch_setup(model, 1)
    net.record = {}
    step()
    torch_shapes = {k: list(v[1:]) for k, v in net.record.items()}
    net.record = None
    torch_params = sum(p.numel() for p in net.parameters())
    torch_shape = list(holder["out"].shape[1:])
    report = opcount_count(binary, opcount_path)
    op_params = int(report["params"])
    op_shapes = opcount_shapes(report)
    op_shape = op_shapes.get(model.output)
    label = model.name + (f" ({model.context} tokens)" if model.context else "")
    print(f"{label}: params PyTorch {torch_params:,}, opcount {op_params:,}; output "
          f"PyTorch {torch_shape}, opcount {op_shape}; {len(torch_shapes)} nodes",
          file=sys.stderr)
    problems = []
    if torch_params != op_params:
        problems.append(f"parameter counts differ: PyTorch {torch_params:,}, opcount {op_params:,}")
    if torch_shape != op_shape:
        problems.append(f"output shapes differ: PyTorch {torch_shape}, opcount {op_shape}")
    if sorted(torch_shapes) != sorted(op_shapes):
        only_t = sorted(set(torch_shapes) - set(op_shapes))[:5]
        only_o = sorted(set(op_shapes) - set(torch_shapes))[:5]
        problems.append(f"node names differ: only in PyTorch {only_t}, only in opcount {only_o}")
    for node, shape in torch_shapes.items():
        if node in op_shapes and op_shapes[node] != shape:
            problems.append(f"node {node}: PyTorch {shape}, opcount {op_shapes[node]}")
            break
    if problems:
        sys.exit(f"{model.path}: the PyTorch module does not match opcount's: " + "; ".join(problems))
    return torch_params


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


def opcount_bench(binary, path, batch, max_memory, rounds=None):
    cmd = [str(binary), "bench", str(path), "--batch", str(batch), "--format", "json"]
    if max_memory:
        cmd += ["--max-memory", max_memory]
    if rounds:
        cmd += ["--rounds", str(rounds)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"
        # "opcount: FILE: reason" -> "reason" (the row names the model)
        return None, last.split(".ron: ", 1)[-1]
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
    every = sorted(p.stem for p in (ROOT / "models").glob("*.ron"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(every))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opcount", default=str(ROOT / "target" / "release" / "opcount"))
    ap.add_argument("--before", help="an older opcount build, timed the same way")
    ap.add_argument("--max-memory", help="passed to opcount bench (e.g. 16G)")
    ap.add_argument("--torch-threads", type=int, help="PyTorch's threads (default: its own)")
    ap.add_argument("--context", type=int,
                    help=f"tokens per example for token models (default: theirs, or "
                         f"{SHORT_CONTEXT} where theirs is over {LONG_CONTEXT})")
    ap.add_argument("--check-only", action="store_true",
                    help="check every model's parameters and output shape, run nothing else")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    names = args.models.split(",")
    for name in names:
        if not (ROOT / "models" / f"{name}.ron").exists():
            sys.exit(f"no model models/{name}.ron")
    binaries = [("after", Path(args.opcount))]
    if args.before:
        binaries.insert(0, ("before", Path(args.before)))
    for _, binary in binaries:
        if not binary.exists():
            sys.exit(f"no opcount binary at {binary} (cargo build --release)")
    tmpdir = tempfile.TemporaryDirectory(prefix="opcount-torchside-")
    models = {}
    for name in names:
        try:
            model = load(name, args.context)
        except RonError as e:
            sys.exit(str(e))
        models[name] = (model, opcount_model_file(model, tmpdir.name))
    # The check, every model first: the timings mean nothing for a different network. It
    # asks the build under test; an older one (--before) may not read every model, and its
    # column then shows why.
    for name in names:
        model, path = models[name]
        check(model, Path(args.opcount), path)
    if args.check_only:
        print(f"all {len(names)} models: PyTorch's parameters and output shapes match opcount's")
        return

    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.rounds} rounds, alternating", file=sys.stderr)
    rows = []
    for name in names:
        model, path = models[name]
        big = model.name in ("vgg16", "resnet18", "mobilenet-v2", "gpt2-small")
        for batch in [int(b) for b in args.batches.split(",")]:
            label = name + (f" ({model.context} tokens)" if model.context else "")
            torch_s, results, errors = [], {lb: [] for lb, _ in binaries}, {}
            step = None
            for r in range(args.rounds):
                order = binaries if r % 2 == 0 else binaries[::-1]
                # opcount first in the first round: a model it refuses for memory is not
                # run in PyTorch either.
                for lb, binary in order:
                    result, error = opcount_bench(binary, path, batch, args.max_memory,
                                                  (3 if batch == 1 else 1) if big else None)
                    if result is None:
                        errors[lb] = error
                    else:
                        results[lb].append(result)
                if r == 0 and not any(results[lb] for lb, _ in binaries):
                    break
                if step is None:
                    _, step, _ = torch_setup(model, batch)
                torch_s.append(time_round(step, 2.0 if big else 0.3))
                print(f"  {label} batch {batch}: round {r + 1} done", file=sys.stderr)
            step = None
            row = {"model": label, "batch": batch,
                   "torch_s": statistics.median(torch_s) if torch_s else None}
            for lb, _ in binaries:
                got = results[lb]
                med = lambda key: statistics.median(d[key] for d in got) if got else None
                row[lb] = {
                    "plain_s": med("plain_s"),
                    "counted_s": med("counted_s"),
                    "ratio": med("ratio"),
                    "kernel_efficiency": med("kernel_efficiency"),
                    "error": errors.get(lb) if not got else None,
                }
            rows.append(row)

    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"torch {torch.__version__} on {torch.get_num_threads()} threads; "
          f"median of {args.rounds} alternating rounds")
    print()
    head = "| model, batch | PyTorch plain |"
    rule = "|---|---:|"
    for lb, _ in binaries:
        head += f" opcount counted ({lb}) | counted/plain | vs PyTorch |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    for row in rows:
        line = f"| {row['model']}, {row['batch']} | {duration(row['torch_s'])} |"
        for lb, _ in binaries:
            o = row[lb]
            if o["counted_s"] is None:
                line += f" - ({o['error']}) | | |"
                continue
            if row["torch_s"] is None:
                line += f" {duration(o['counted_s'])} | {o['ratio']:.3f} | |"
                continue
            speed = row["torch_s"] / o["counted_s"]
            verdict = f"{speed:.2f}x faster" if speed >= 1 else f"**{1 / speed:.2f}x slower**"
            line += f" {duration(o['counted_s'])} | {o['ratio']:.3f} | {verdict} |"
        print(line)
    for name in names:
        model = models[name][0]
        if model.context:
            print(f"\n{name} runs at {model.context} tokens, not its {Model(model.path).input[0]}, "
                  f"on both sides (opcount reads a copy of the model file with "
                  f"input: [{model.context}]).")
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
