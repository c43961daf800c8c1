"""Makes the ONNX files of tests/onnx/ and their RON twins.

Run from the repository's root with PyTorch and the `onnx` package installed (CI never runs
it; the files are checked in):

    python tests/onnx/make.py

Each model is a small PyTorch module exported with torch.onnx.export (the TorchScript
exporter, dynamo=False, batch dimension symbolic), beside a RON file written by hand from the
same definition, which tests/onnx.rs checks gives the same counts. The malformed files at
the end are built with onnx.helper or by damaging a good file's bytes.
"""

import os
import sys

import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)


def export(name, module, example, ron, opset=17, input_dtype=None):
    """Exports `module` at `example`'s shape, batch symbolic, and writes its RON twin."""
    module.eval()
    path = os.path.join(HERE, name + ".onnx")
    torch.onnx.export(
        module,
        (example,),
        path,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(path))
    assert os.path.getsize(path) <= 200_000, name
    if ron is not None:
        with open(os.path.join(HERE, name + ".ron"), "w") as f:
            f.write(ron.strip() + "\n")
    if ron is not None:
        vocab = None if example.is_floating_point() else module.wte.num_embeddings
        oracle(name, module, example.shape[1:], vocab=vocab)


def oracle(name, module, shape, train=False, vocab=None):
    """PyTorch's outputs for a batch of two made-up inputs, written as `name.io` (a line of
    inputs, a line of outputs): tests/onnx.rs checks opcount's forward pass against them,
    so the weights must have been read in the right order."""
    module.train(train)
    n = 2
    for d in shape:
        n *= d
    if vocab is None:
        x = torch.sin(torch.arange(n, dtype=torch.float64) * 0.37).reshape(2, *shape)
    else:  # token ids
        x = ((torch.arange(n) * 7) % vocab).reshape(2, *shape)
    with torch.no_grad():
        y = module.double()(x)
    module.float()
    with open(os.path.join(HERE, name + ".io"), "w") as f:
        f.write(" ".join(repr(v) for v in x.flatten().tolist()) + "\n")
        f.write(" ".join(repr(v) for v in y.flatten().tolist()) + "\n")


def twin(name, input, graph, loss="SoftmaxCrossEntropy"):
    """A RON graph model: `graph` is a list of (name, op, inputs or None)."""
    lines = [f'// The RON twin of {name}.onnx (tests/onnx/make.py).', "(",
             f'    name: "{name}",', f"    input: {input},", "    graph: ["]
    for node, op, inputs in graph:
        reads = "" if inputs is None else ", inputs: [" + ", ".join(f'"{i}"' for i in inputs) + "]"
        lines.append(f'        (name: "{node}", op: {op}{reads}),')
    lines += ["    ],", f"    loss: {loss},", ")"]
    return "\n".join(lines)


def graph_model(name, nodes, inits, x_shape, y_shape, opset=17, x_type=TensorProto.FLOAT):
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", x_type, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def weights(name, *shape):
    return numpy_helper.from_array(torch.randn(*shape).numpy(), name)


def save(name, model, check=True):
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, os.path.join(HERE, name + ".onnx"))


BAD = os.path.join(HERE, "bad")
os.makedirs(BAD, exist_ok=True)


def bad(name, model_or_bytes, expect):
    path = os.path.join(BAD, name + ".onnx")
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else \
        model_or_bytes.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
    with open(path[:-5] + ".expect", "w") as f:
        f.write(expect + "\n")


def floats(values):
    """A RON list of float32 values, each written so that it reads back to the same bits."""
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def later():
    """The models added after the first set: element-wise arithmetic with constants
    (opcount's ConstOp) and a softmax over the last axis of [tokens, classes], each seeded on
    its own so that `make.py --only-later` makes the same files as a full run."""

    class Consts(nn.Module):
        """On [tokens, width]: a mean taken from every token and a division by a number
        (attention's 1/sqrt(d) is written so), a dense layer, a scale per feature, and a
        constant minus the value, plus a number."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 5)
            self.register_buffer("mean", torch.randn(6))
            self.register_buffer("scale", torch.rand(5) + 0.5)

        def forward(self, x):
            h = (x - self.mean) / 8.0
            h = torch.tanh(self.fc(h)) * self.scale
            return 1.0 - h + 0.5

    torch.manual_seed(160)
    m = Consts()
    export("consts", m, torch.randn(1, 4, 6), twin("consts", [4, 6], [
        ("sub", f"ConstOp(op: Sub, shape: [6], values: {floats(m.mean)})", None),
        ("div", "ConstOp(op: Div, values: [8.0])", None),
        ("fc", "Dense(units: 5)", None), ("tanh", "Tanh", None),
        ("mul", f"ConstOp(op: Mul, shape: [5], values: {floats(m.scale)})", None),
        ("rsub", "ConstOp(op: SubFrom, values: [1.0])", None),
        ("add", "ConstOp(op: Add, values: [0.5])", None)], loss="Mse"))

    class Normalize(nn.Module):
        """An image scaled to [0, 1] and normalised per channel (torchvision's mean and
        std), a convolution, the mean over height and width, doubled, a dense head."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

        def forward(self, x):
            x = (x / 255.0 - self.mean) / self.std
            h = torch.relu(self.conv(x)).mean((2, 3))
            return self.fc(h * 2.0)

    torch.manual_seed(161)
    m = Normalize()
    export("normalize", m, torch.randn(1, 3, 5, 5), twin("normalize", [3, 5, 5], [
        ("scale", "ConstOp(op: Div, values: [255.0])", None),
        ("mean", f"ConstOp(op: Sub, shape: [3, 1, 1], values: {floats(m.mean.flatten())})",
         None),
        ("std", f"ConstOp(op: Div, shape: [3, 1, 1], values: {floats(m.std.flatten())})",
         None),
        ("conv", "Conv2d(out_channels: 4, kernel: 3, padding: 1)", None),
        ("relu", "Relu", None), ("pool", "GlobalAvgPool2d", None),
        ("double", "ConstOp(op: Mul, values: [2.0])", None),
        ("fc", "Dense(units: 2)", None)]))

    # A softmax over the last axis of [tokens, classes]: per token.
    torch.manual_seed(162)
    export("softmax_rows", nn.Sequential(nn.Linear(6, 3), nn.Softmax(dim=-1)),
           torch.randn(1, 4, 6), twin("softmax_rows", [4, 6], [
               ("fc", "Dense(units: 3)", None), ("softmax", "Softmax", None)], loss="Mse"))

    # Single-head attention written out: q kᵀ / sqrt(d), a softmax per row, times v.
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(6, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            q, k, v = self.q(x), self.k(x), self.v(x)
            s = q @ k.transpose(-2, -1) / 2.0
            return self.out(torch.softmax(s, dim=-1) @ v)

    torch.manual_seed(163)
    export("attention", Attention(), torch.randn(1, 5, 6), twin("attention", [5, 6], [
        ("q", "Dense(units: 4)", ["input"]), ("k", "Dense(units: 4)", ["input"]),
        ("v", "Dense(units: 4)", ["input"]), ("kt", "Transpose(perm: [1, 0])", ["k"]),
        ("scores", "MatMul", ["q", "kt"]), ("scaled", "ConstOp(op: Div, values: [2.0])",
                                             ["scores"]),
        ("softmax", "Softmax", ["scaled"]), ("mix", "MatMul", ["softmax", "v"]),
        ("out", "Dense(units: 3)", ["mix"])], loss="Mse"))

    # Two heads written out: each of q, k, v split into heads (a Reshape, a Transpose),
    # attention per head, the heads joined back (a Transpose, a Reshape).
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            b, t, _ = x.shape

            def split(h):
                return h.view(b, t, 2, 4).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            s = q @ k.transpose(-2, -1) / 2.0
            o = torch.softmax(s, dim=-1) @ v
            return self.out(o.transpose(1, 2).reshape(b, t, 8))

    torch.manual_seed(164)
    # PyTorch joins k's two transposes into one, [t, heads, d] to [heads, d, t].
    heads = []
    for h in "qkv":
        heads += [(h, "Dense(units: 8)", ["input"]),
                  (h + "4", "Reshape(shape: [5, 2, 4])", [h])]
        if h != "k":
            heads.append((h + "h", "Transpose(perm: [1, 0, 2])", [h + "4"]))
    heads += [("kt", "Transpose(perm: [1, 2, 0])", ["k4"]),
              ("scores", "MatMul", ["qh", "kt"]),
              ("scaled", "ConstOp(op: Div, values: [2.0])", ["scores"]),
              ("softmax", "Softmax", ["scaled"]), ("mix", "MatMul", ["softmax", "vh"]),
              ("join", "Transpose(perm: [1, 0, 2])", ["mix"]),
              ("joined", "Reshape(shape: [5, 8])", ["join"]), ("out", "Dense(units: 3)", ["joined"])]
    export("heads", Heads(), torch.randn(1, 5, 8), twin("heads", [5, 8], heads, loss="Mse"))

    # What ConstOp does not compute.
    bad("div-by-value", graph_model("m", [
        helper.make_node("Constant", [], ["one"], name="one", value_float=1.0),
        helper.make_node("Div", ["one", "x"], ["y"], name="inverse"),
    ], [], ["N", 4], ["N", 4]), "node 1 (inverse, Div): divides a constant by the computed 'x'")
    bad("const-per-example", graph_model("m", [
        helper.make_node("Mul", ["x", "c"], ["y"], name="scale"),
    ], [weights("c", 2, 4)], ["N", 4], ["N", 4]),
        "node 0 (scale, Mul): a 2x4 constant against a 4 value")
    bad("const-grows", graph_model("m", [
        helper.make_node("Add", ["x", "c"], ["y"], name="shift"),
    ], [weights("c", 3, 4)], ["N", 1, 4], ["N", 3, 4]),
        "node 0 (shift, Add): the constant's shape 3x4 does not broadcast to the input's 1x4")

    # Sub and Div of two computed values: a difference of two dense layers, divided by a
    # computed normaliser kept away from zero.
    class SubDiv(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(4, 3)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            return self.out((a - b) / (torch.sigmoid(b) + 1.0))

    torch.manual_seed(165)
    export("sub_div", SubDiv(), torch.randn(1, 6), twin("sub_div", [6], [
        ("a", "Dense(units: 4)", ["input"]), ("b", "Dense(units: 4)", ["input"]),
        ("diff", "Sub", ["a", "b"]), ("gate", "Sigmoid", ["b"]),
        ("den", "ConstOp(op: Add, values: [1.0])", ["gate"]), ("quot", "Div", ["diff", "den"]),
        ("out", "Dense(units: 3)", ["quot"])]))
    bad("sub-shapes", graph_model("m", [
        helper.make_node("Relu", ["x"], ["r"], name="r"),
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("Sub", ["r", "f"], ["y"], name="diff"),
    ], [], ["N", 2, 4], ["N", 8]), "node 2 (diff, Sub): subtracts a 8 value from a 2x4 value")


def broadcasting():
    """Element-wise arithmetic between two computed values whose shapes broadcast (opcount's
    Broadcast), each model seeded on its own so that `make.py --only-broadcasting` makes the
    same files as a full run: a layer normalisation written out by hand, a
    squeeze-excitation gate, and all four operations with either input or both spread."""

    class HandNorm(nn.Module):
        """A dense layer, then its rows normalised as written by hand: the mean over the last
        axis, x - mean, (x - mean) ** 2, its mean, / sqrt(var + eps); a dense head."""

        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = self.fc(x)
            d = h - h.mean(-1, keepdim=True)
            var = (d ** 2).mean(-1, keepdim=True)
            return self.out(d / torch.sqrt(var + 1e-5))

    torch.manual_seed(170)
    eps = floats(torch.tensor([1e-5]))
    export("layernorm_hand", HandNorm(), torch.randn(1, 5, 6), twin("layernorm_hand", [5, 6], [
        ("fc", "Dense(units: 6)", ["input"]),
        # The mean over the last axis: each row read as a 1 x 6 image, pooled, held [5, 1].
        ("rows", "Reshape(shape: [5, 1, 6])", ["fc"]), ("mean", "GlobalAvgPool2d", ["rows"]),
        ("mean_col", "Reshape(shape: [5, 1])", ["mean"]),
        ("d", "Broadcast(op: Sub)", ["fc", "mean_col"]), ("square", "Mul", ["d", "d"]),
        ("rows2", "Reshape(shape: [5, 1, 6])", ["square"]), ("var", "GlobalAvgPool2d", ["rows2"]),
        ("eps", f"ConstOp(op: Add, values: {eps})", ["var"]), ("root", "Sqrt", ["eps"]),
        ("root_col", "Reshape(shape: [5, 1])", ["root"]),
        ("norm", "Broadcast(op: Div)", ["d", "root_col"]), ("out", "Dense(units: 3)", ["norm"])],
        loss="Mse"))

    class SqueezeExcite(nn.Module):
        """A convolution, and a squeeze-excitation gate of it: its channels' means, two
        dense layers, a sigmoid, one number per channel times every value of that channel
        (`[4, 1, 1]` against `[4, 5, 5]`, the gate first); pooled, a dense head."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.fc2, self.head = nn.Linear(4, 2), nn.Linear(2, 4), nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            g = torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(h).flatten(1)))))
            h = g.view(-1, 4, 1, 1) * h
            return self.head(h.mean((2, 3)))

    torch.manual_seed(171)
    export("se_gate", SqueezeExcite(), torch.randn(1, 3, 5, 5), twin("se_gate", [3, 5, 5], [
        ("conv", "Conv2d(out_channels: 4, kernel: 3, padding: 1)", ["input"]),
        ("relu", "Relu", ["conv"]), ("squeeze", "GlobalAvgPool2d", ["relu"]),
        ("fc1", "Dense(units: 2)", ["squeeze"]), ("relu1", "Relu", ["fc1"]),
        ("fc2", "Dense(units: 4)", ["relu1"]), ("gate", "Sigmoid", ["fc2"]),
        ("gate_img", "Reshape(shape: [4, 1, 1])", ["gate"]),
        ("excite", "Broadcast(op: Mul)", ["gate_img", "relu"]),
        ("pool", "GlobalAvgPool2d", ["excite"]), ("head", "Dense(units: 3)", ["pool"])]))

    class Spread(nn.Module):
        """A column [4, 1] and a row [1, 6] of two dense layers: their sum (both spread),
        the column minus it (the first spread), times the row (the second), divided by
        sigmoid(column) + 1 (the second); flattened, a dense head."""

        def __init__(self):
            super().__init__()
            self.col, self.row, self.out = nn.Linear(8, 4), nn.Linear(8, 6), nn.Linear(24, 3)

        def forward(self, x):
            c, r = self.col(x).view(-1, 4, 1), self.row(x).view(-1, 1, 6)
            a = c + r
            p = (c - a) * r
            return self.out((p / (torch.sigmoid(c) + 1.0)).flatten(1))

    torch.manual_seed(172)
    export("broadcast", Spread(), torch.randn(1, 8), twin("broadcast", [8], [
        ("col", "Dense(units: 4)", ["input"]), ("row", "Dense(units: 6)", ["input"]),
        ("col_held", "Reshape(shape: [4, 1])", ["col"]),
        ("row_held", "Reshape(shape: [1, 6])", ["row"]),
        ("sum", "Broadcast(op: Add)", ["col_held", "row_held"]),
        ("diff", "Broadcast(op: Sub)", ["col_held", "sum"]),
        ("prod", "Broadcast(op: Mul)", ["diff", "row_held"]),
        ("gate", "Sigmoid", ["col"]), ("den", "ConstOp(op: Add, values: [1.0])", ["gate"]),
        ("den_held", "Reshape(shape: [4, 1])", ["den"]),
        ("quot", "Broadcast(op: Div)", ["prod", "den_held"]),
        ("flat", "Flatten", ["quot"]), ("out", "Dense(units: 3)", ["flat"])]))

    # Two values of one shape in ONNX held otherwise here: a channel's mean ([4] here, after
    # GlobalAveragePool) plus its maximum ([4, 1, 1]): the mean read as [4, 1, 1], then Add.
    save("pool_sum", graph_model("m", [
        helper.make_node("GlobalAveragePool", ["x"], ["mean"], name="mean"),
        helper.make_node("MaxPool", ["x"], ["max"], name="max", kernel_shape=[3, 3]),
        helper.make_node("Add", ["mean", "max"], ["y"], name="sum"),
    ], [], ["N", 4, 3, 3], ["N", 4, 1, 1]))
    with open(os.path.join(HERE, "pool_sum.ron"), "w") as f:
        f.write(twin("pool_sum", [4, 3, 3], [
            ("mean", "GlobalAvgPool2d", ["input"]), ("max", "MaxPool2d(size: 3)", ["input"]),
            ("mean_held", "Reshape(shape: [4, 1, 1])", ["mean"]), ("sum", "Add", ["mean_held", "max"])],
            loss="Mse") + "\n")

    # Shapes that do not broadcast, one example's axes aligned after the batch.
    bad("mul-shapes", graph_model("m", [
        helper.make_node("Reshape", ["x", "shape"], ["t"], name="turn"),
        helper.make_node("Mul", ["x", "t"], ["y"], name="gate"),
    ], [numpy_helper.from_array(torch.tensor([0, 4, 3]).numpy(), "shape")], ["N", 3, 4],
        ["N", 3, 4]),
        "node 1 (gate, Mul): multiplies a 3x4 value by a 4x3 value: the shapes do not broadcast")
    bad("pow-cube", graph_model("m", [
        helper.make_node("Constant", [], ["three"], name="three", value_float=3.0),
        helper.make_node("Pow", ["x", "three"], ["y"], name="cube"),
    ], [], ["N", 4], ["N", 4]), "node 1 (cube, Pow): an exponent other than the number 2")


if sys.argv[1:] == ["--only-later"]:
    later()
    sys.exit()
if sys.argv[1:] == ["--only-broadcasting"]:
    broadcasting()
    sys.exit()

# One model per operation.

class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


export("relu", Mlp(), torch.randn(1, 8), twin("relu", [8], [
    ("fc1", "Dense(units: 16)", None), ("relu", "Relu", None), ("fc2", "Dense(units: 3)", None)]))

for act, layer in [("sigmoid", "Sigmoid"), ("tanh", "Tanh")]:
    f = {"sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}[act]
    export(act, nn.Sequential(nn.Linear(6, 5), f, nn.Linear(5, 2)), torch.randn(1, 6),
           twin(act, [6], [("fc1", "Dense(units: 5)", None), (act, layer, None),
                           ("fc2", "Dense(units: 2)", None)]))

export("softmax", nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)), torch.randn(1, 4),
       twin("softmax", [4], [("fc", "Dense(units: 3)", None), ("softmax", "Softmax", None)],
            loss="Mse"))

export("gelu", nn.Sequential(nn.Linear(4, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 2)),
       torch.randn(1, 4), twin("gelu", [4], [("fc1", "Dense(units: 8)", None),
                                              ("gelu", "Gelu", None),
                                              ("fc2", "Dense(units: 2)", None)]), opset=20)

# The exact GELU: opset 17 spells it out (Div, Erf, Add, Mul, Mul), opset 20 has a node.
# The second draws its weights from a copy of the random state, so that the files after it
# are the same as before it was added.
for name, opset in [("gelu_erf", 17), ("gelu_erf20", 20)]:
    with torch.random.fork_rng(enabled=opset == 20):
        export(name, nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)),
               torch.randn(1, 4), twin(name, [4], [("fc1", "Dense(units: 8)", None),
                                                   ("gelu", "GeluErf", None),
                                                   ("fc2", "Dense(units: 2)", None)]),
               opset=opset)

export("conv", nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Flatten(),
                             nn.Linear(4 * 4 * 4, 2)),
       torch.randn(1, 3, 8, 8), twin("conv", [3, 8, 8], [
           ("conv", "Conv2d(out_channels: 4, kernel: 3, stride: 2, padding: 1)", None),
           ("flatten", "Flatten", None), ("fc", "Dense(units: 2)", None)]))

export("conv_nobias", nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.Flatten(),
                                    nn.Linear(3 * 5 * 5, 2)),
       torch.randn(1, 2, 5, 5), twin("conv_nobias", [2, 5, 5], [
           ("conv", "Conv2d(out_channels: 3, kernel: 1, bias: false)", None),
           ("flatten", "Flatten", None), ("fc", "Dense(units: 2)", None)]))

export("maxpool", nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
                                nn.Linear(2 * 4 * 4, 2)),
       torch.randn(1, 2, 8, 8), twin("maxpool", [2, 8, 8], [
           ("pool", "MaxPool2d(size: 3, stride: 2, padding: 1)", None),
           ("flatten", "Flatten", None), ("fc", "Dense(units: 2)", None)]))

export("avgpool", nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)),
       torch.randn(1, 2, 6, 6), twin("avgpool", [2, 6, 6], [
           ("pool", "AvgPool2d(size: 2)", None),
           ("flatten", "Flatten", None), ("fc", "Dense(units: 2)", None)]))


export("silu", nn.Sequential(nn.Linear(4, 6), nn.SiLU(), nn.Linear(6, 2)), torch.randn(1, 4),
       twin("silu", [4], [("fc1", "Dense(units: 6)", None), ("gate", "Sigmoid", None),
                          ("silu", "Mul", ["fc1", "gate"]), ("fc2", "Dense(units: 2)", None)]))


export("conv_rect", nn.Sequential(nn.Conv2d(2, 3, (3, 1), stride=(2, 1), padding=(1, 0)),
                                  nn.Flatten(), nn.Linear(3 * 3 * 5, 2)),
       torch.randn(1, 2, 6, 5), twin("conv_rect", [2, 6, 5], [
           ("conv", "Conv2d(out_channels: 3, kernel: (3, 1), stride: (2, 1), padding: (1, 0))",
            None), ("flatten", "Flatten", None), ("fc", "Dense(units: 2)", None)]))


class View(nn.Module):
    """x.view(x.size(0), -1): a Shape, Gather, Unsqueeze, Concat chain feeding a Reshape."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 3 * 3, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


export("reshape", View(), torch.randn(1, 1, 5, 5), twin("reshape", [1, 5, 5], [
    ("conv", "Conv2d(out_channels: 2, kernel: 3)", None), ("relu", "Relu", None),
    ("flatten", "Flatten", None), ("fc", "Dense(units: 2)", None)]))


class Pooled(nn.Module):
    """GlobalAveragePool, then a flatten that moves nothing."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1))


export("globalavgpool", Pooled(), torch.randn(1, 3, 5, 5), twin("globalavgpool", [3, 5, 5], [
    ("conv", "Conv2d(out_channels: 4, kernel: 3, padding: 1)", None),
    ("gap", "GlobalAvgPool2d", None), ("fc", "Dense(units: 3)", None)]))


class MeanHead(nn.Module):
    """ReLU6 (a Clip from 0 to 6), the mean over height and width written by hand (a
    ReduceMean), unsqueezed and squeezed back (moving nothing), and a dense head."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)
        self.act = nn.ReLU6()

    def forward(self, x):
        y = self.act(self.conv(x)).mean((2, 3), keepdim=True)
        return self.fc(y.squeeze(-1).squeeze(-1).unsqueeze(1).squeeze(1))


export("reducemean", MeanHead(), torch.randn(1, 3, 5, 5), twin("reducemean", [3, 5, 5], [
    ("conv", "Conv2d(out_channels: 4, kernel: 3, padding: 1)", None), ("relu6", "Relu6", None),
    ("mean", "GlobalAvgPool2d", None), ("fc", "Dense(units: 3)", None)]))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.head(h + self.fc2(h))


export("add", Residual(), torch.randn(1, 5), twin("add", [5], [
    ("fc1", "Dense(units: 5)", None), ("tanh", "Tanh", None), ("fc2", "Dense(units: 5)", None),
    ("sum", "Add", ["tanh", "fc2"]), ("head", "Dense(units: 3)", None)]))


class Tokens(nn.Module):
    """A dense layer on [tokens, width] (MatMul, then Add of the bias) and a LayerNorm."""

    def __init__(self):
        super().__init__()
        self.fc, self.ln = nn.Linear(6, 4), nn.LayerNorm(4)

    def forward(self, x):
        return self.ln(self.fc(x))


export("matmul", Tokens(), torch.randn(1, 3, 6), twin("matmul", [3, 6], [
    ("fc", "Dense(units: 4)", None), ("ln", "LayerNorm", None)], loss="Mse"))


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.fc = nn.Embedding(10, 4), nn.Linear(4, 10)

    def forward(self, ids):
        return self.fc(self.wte(ids))


export("embedding", Embed(), torch.zeros(1, 5, dtype=torch.long), twin("embedding", [5], [
    ("wte", "Embedding(vocab: 10, width: 4)", None), ("fc", "Dense(units: 10)", None)]))


class MlpBlock(nn.Module):
    """A pre-norm transformer block without attention (opcount's attention is its causal
    Scores, CausalSoftmax and Mix, written in RON; docs/onnx.md): token embedding, layer
    norm, a tanh-GELU MLP on every token, the residual add, a final norm and the head."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(12, 8)
        self.ln1, self.fc, self.proj = nn.LayerNorm(8), nn.Linear(8, 32), nn.Linear(32, 8)
        self.act = nn.GELU(approximate="tanh")
        self.ln2, self.head = nn.LayerNorm(8), nn.Linear(8, 12)

    def forward(self, ids):
        x = self.wte(ids)
        x = x + self.proj(self.act(self.fc(self.ln1(x))))
        return self.head(self.ln2(x))


export("transformer", MlpBlock(), torch.zeros(1, 6, dtype=torch.long),
       twin("transformer", [6], [
           ("wte", "Embedding(vocab: 12, width: 8)", None), ("ln1", "LayerNorm", None),
           ("fc", "Dense(units: 32)", None), ("gelu", "Gelu", None),
           ("proj", "Dense(units: 8)", None), ("res", "Add", ["wte", "proj"]),
           ("ln2", "LayerNorm", None), ("head", "Dense(units: 12)", None)]), opset=20)


# A small ResNet: a stem, two residual blocks (the second downsampling, with a 1x1
# convolution on its shortcut), global average pooling and a dense head.

class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.block1, self.block2 = Block(8, 8, 1), Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


RESNET_RON = """
// The RON twin of resnet.onnx (tests/onnx/make.py): a stem, two residual blocks, the
// second downsampling with a 1x1 convolution on its shortcut, then pooling and a head.
(
    name: "resnet",
    input: [3, 16, 16],
    graph: [
        (name: "stem", op: Conv2d(out_channels: 8, kernel: 3, padding: 1, bias: false)),
        (name: "stem.bn", op: BatchNorm2d),
        (name: "stem.relu", op: Relu),
        (name: "b1.conv1", op: Conv2d(out_channels: 8, kernel: 3, padding: 1, bias: false)),
        (name: "b1.bn1", op: BatchNorm2d),
        (name: "b1.relu1", op: Relu),
        (name: "b1.conv2", op: Conv2d(out_channels: 8, kernel: 3, padding: 1, bias: false)),
        (name: "b1.bn2", op: BatchNorm2d),
        (name: "b1.add", op: Add, inputs: ["b1.bn2", "stem.relu"]),
        (name: "b1.relu2", op: Relu),
        (name: "b2.conv1", op: Conv2d(out_channels: 16, kernel: 3, stride: 2, padding: 1, bias: false)),
        (name: "b2.bn1", op: BatchNorm2d),
        (name: "b2.relu1", op: Relu),
        (name: "b2.conv2", op: Conv2d(out_channels: 16, kernel: 3, padding: 1, bias: false)),
        (name: "b2.bn2", op: BatchNorm2d),
        (name: "b2.down", op: Conv2d(out_channels: 16, kernel: 1, stride: 2, bias: false), inputs: ["b1.relu2"]),
        (name: "b2.down.bn", op: BatchNorm2d),
        (name: "b2.add", op: Add, inputs: ["b2.bn2", "b2.down.bn"]),
        (name: "b2.relu2", op: Relu),
        (name: "gap", op: GlobalAvgPool2d),
        (name: "fc", op: Dense(units: 10)),
    ],
    loss: SoftmaxCrossEntropy,
)
"""


def export_training(name, module, example, ron):
    """Exported in training mode, so BatchNormalization stays a node (opcount's batch norm
    is training mode; in eval mode PyTorch folds it into the convolution)."""
    path = os.path.join(HERE, name + ".onnx")
    module.train()
    torch.onnx.export(module, (example,), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
                      dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False)
    onnx.checker.check_model(onnx.load(path))
    assert os.path.getsize(path) <= 200_000, name
    with open(os.path.join(HERE, name + ".ron"), "w") as f:
        f.write(ron.strip() + "\n")
    oracle(name, module, example.shape[1:], train=True)


export_training("resnet", ResNet(), torch.randn(2, 3, 16, 16), RESNET_RON)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand (1x1), depthwise 3x3 (groups = channels), project (1x1),
    batch norms, ReLU6, the residual add; then pooling and a head."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = x + self.block(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


export_training("depthwise", InvertedResidual(), torch.randn(2, 4, 8, 8), twin("depthwise", [4, 8, 8], [
    ("expand", "Conv2d(out_channels: 8, kernel: 1, bias: false)", ["input"]),
    ("bn1", "BatchNorm2d", None), ("relu1", "Relu6", None),
    ("dw", "Conv2d(out_channels: 8, kernel: 3, padding: 1, groups: 8, bias: false)", None),
    ("bn2", "BatchNorm2d", None), ("relu2", "Relu6", None),
    ("project", "Conv2d(out_channels: 4, kernel: 1, bias: false)", None),
    ("bn3", "BatchNorm2d", None), ("sum", "Add", ["input", "bn3"]),
    ("gap", "GlobalAvgPool2d", None), ("fc", "Dense(units: 3)", None)]))
export_training("batchnorm", nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(),
                                  nn.Linear(3 * 4 * 4, 2)),
       torch.randn(2, 2, 6, 6), twin("batchnorm", [2, 6, 6], [
           ("conv", "Conv2d(out_channels: 3, kernel: 3)", None), ("bn", "BatchNorm2d", None),
           ("flatten", "Flatten", None), ("fc", "Dense(units: 2)", None)]))


# Made with onnx.helper: operations PyTorch's exporter leaves out, external data, and the
# malformed files.

# Identity and Dropout move nothing; a Gemm with transB 0 holds its weights transposed.
save("identity", graph_model("identity", [
    helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
    helper.make_node("Identity", ["h"], ["i"], name="same"),
    helper.make_node("Dropout", ["i"], ["d"], name="drop"),
    helper.make_node("Relu", ["d"], ["r"], name="relu"),
    helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1),
], [weights("w1", 4, 6), weights("b1", 6), weights("w2", 2, 6)], ["N", 4], ["N", 2]))
with open(os.path.join(HERE, "identity.ron"), "w") as f:
    f.write(twin("identity", [4], [("fc1", "Dense(units: 6)", None), ("relu", "Relu", None),
                                    ("fc2", "Dense(units: 2, bias: false)", None)]) + "\n")

# A model whose weights are in a file of their own.
ext = graph_model("external", [
    helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1),
], [weights("w", 3, 40), weights("b", 3)], ["N", 40], ["N", 3])
onnx.save(ext, os.path.join(HERE, "external.onnx"), save_as_external_data=True,
          all_tensors_to_one_file=True, location="external.data", size_threshold=0)
with open(os.path.join(HERE, "external.ron"), "w") as f:
    f.write(twin("external", [40], [("fc", "Dense(units: 3)", None)]) + "\n")

# Symbolic sizes: counted with --input-shape.
save("symbolic", graph_model("symbolic", [
    helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
    helper.make_node("GlobalAveragePool", ["c"], ["y"], name="gap"),
], [weights("w", 4, 3, 3, 3)], ["N", 3, "H", "W"], ["N", 4, 1, 1]))

good = open(os.path.join(HERE, "resnet.onnx"), "rb").read()
bad("truncated", good[: len(good) // 2], "not a readable ONNX model: byte")
bad("garbage", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a readable ONNX model")
bad("text", b"(name: \"a RON file named .onnx\", input: [2])\n", "not a readable ONNX model")
bad("empty", b"", "no graph in it")
relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
bad("missing-initializer", graph_model("m", [
    helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1),
], [weights("w", 3, 4)], ["N", 4], ["N", 3]), "reads 'b', which no node, initializer or input")
bad("shape-mismatch", graph_model("m", [
    helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
], [weights("w", 2, 5, 3, 3)], ["N", 3, 8, 8], ["N", 2, 6, 6]),
    "node 0 (conv, Conv): weights for 5 input channels, but its input has 3")
bad("declared-shape", graph_model("m", [
    helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1),
], [weights("w", 3, 4)], ["N", 4], ["N", 7]), "declared 7 per example, but its nodes compute 3")
bad("add-shapes", graph_model("m", [
    helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1),
    helper.make_node("Add", ["x", "h"], ["y"], name="sum"),
], [weights("w", 3, 4)], ["N", 4], ["N", 3]), "node 1 (sum, Add): adds a 4 value to a 3 value")
cycle = graph_model("m", [
    helper.make_node("Add", ["x", "b"], ["a"], name="first"),
    helper.make_node("Relu", ["a"], ["b"], name="second"),
    helper.make_node("Relu", ["b"], ["y"], name="third"),
], [], ["N", 4], ["N", 4])
bad("cycle", cycle, "node 0 (first, Add): is part of a cycle")
bad("unknown-op", graph_model("m", [
    helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1),
    helper.make_node("HardSwish", ["h"], ["y"], name="/act/HardSwish"),
], [weights("w", 3, 4)], ["N", 4], ["N", 3], opset=17),
    "node 1 (/act/HardSwish, HardSwish): HardSwish is not supported")
bad("old-opset", graph_model("m", relu, [], ["N", 4], ["N", 4], opset=9),
    "opset 9; opcount reads opset 13 and later")
bad("two-inputs", helper.make_model(helper.make_graph(
    [helper.make_node("Add", ["x", "z"], ["y"], name="sum")], "m",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
     helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
    opset_imports=[helper.make_opsetid("", 17)]), "the graph has 2 inputs (x, z)")
bad("symbolic-size", graph_model("m", relu, [], ["N", "features"], ["N", "features"]),
    "not all sizes known; give them with --input-shape")
bad("dilated-conv", graph_model("m", [
    helper.make_node("Conv", ["x", "w"], ["y"], name="conv", dilations=[2, 2]),
], [weights("w", 2, 3, 3, 3)], ["N", 3, 8, 8], ["N", 2, 4, 4]),
    "node 0 (conv, Conv): dilations [2, 2]: opcount takes dilation 1")
m = graph_model("m", [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                [weights("w", 3, 4)], ["N", 4], ["N", 3])
m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]
bad("weights-wrong-length", m, "tensor 'w': 12 values expected, 11 found")
ext_bad = graph_model("m", [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                      [weights("w", 3, 4)], ["N", 4], ["N", 3])
t = ext_bad.graph.initializer[0]
t.ClearField("raw_data")
t.data_location = TensorProto.EXTERNAL
t.external_data.add(key="location", value="../../../etc/passwd")
bad("external-outside", ext_bad, "outside the model's directory")
# A bias added to a matrix product another node also reads (through an Identity): fusing
# it into the dense layer would change what that node sees, so it is a constant added
# (ConstOp), not the layer's bias. (Refused, in tests/onnx/bad/, before ConstOp.)
save("bias_shared", graph_model("m", [
    helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
    helper.make_node("Identity", ["h"], ["i"], name="same"),
    helper.make_node("Add", ["i", "b"], ["biased"], name="bias"),
    helper.make_node("Add", ["biased", "h"], ["y"], name="sum"),
], [weights("w", 4, 3), weights("b", 3)], ["N", 4], ["N", 3]))
bad("clip-range", graph_model("m", [
    helper.make_node("Constant", [], ["lo"], name="lo", value_float=-1.0),
    helper.make_node("Constant", [], ["hi"], name="hi", value_float=1.0),
    helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip"),
], [], ["N", 4], ["N", 4]), "node 2 (clip, Clip): a clip to [-1, 1]")
bad("reduce-channels", graph_model("m", [
    helper.make_node("ReduceMean", ["x"], ["y"], name="mean", axes=[1], keepdims=0),
], [], ["N", 3, 4, 4], ["N", 4, 4], opset=17),
    "node 0 (mean, ReduceMean): a mean over axes [1] of a 3x4x4 value")
# A product of two computed values (refused, in tests/onnx/bad/, before opcount's MatMul).
save("matmul_values", graph_model("m", [
    helper.make_node("MatMul", ["x", "x"], ["y"], name="scores"),
], [], ["N", 4, 4], ["N", 4, 4]))
later()
broadcasting()
print("made", sorted(f for f in os.listdir(HERE) if f.endswith(".onnx")))
