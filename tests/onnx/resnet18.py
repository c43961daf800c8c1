"""ResNet-18 (torchvision's layout, written out here) exported from PyTorch in training mode,
for the full-size check in docs/onnx.md. The file (47 MB) is not checked in:

    python tests/onnx/resnet18.py /tmp/resnet18.onnx
    opcount count /tmp/resnet18.onnx --closed-form-only --convention mac

gives the figures of models/resnet18.ron.
"""

import sys

import torch
from torch import nn

class Basic(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); s.b1 = nn.BatchNorm2d(cout)
        s.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); s.b2 = nn.BatchNorm2d(cout)
        s.down = None
        if stride != 1 or cin != cout:
            s.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(s, x):
        y = torch.relu(s.b1(s.c1(x)))
        y = s.b2(s.c2(y))
        return torch.relu(y + (x if s.down is None else s.down(x)))

class ResNet18(nn.Module):
    def __init__(s):
        super().__init__()
        s.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers = []
        cin = 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
            cin = cout
        s.layers = nn.Sequential(*layers)
        s.fc = nn.Linear(512, 1000)
    def forward(s, x):
        x = s.layers(s.stem(x))
        return s.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

m = ResNet18(); m.train()
torch.onnx.export(m, (torch.randn(2, 3, 224, 224),), sys.argv[1], input_names=["x"], output_names=["y"],
    dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False,
    training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
