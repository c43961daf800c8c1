"""PyTorch's FlopCounterMode on the GPT models of opcount's models/, built layer for layer as
the RON files describe them (pre-norm blocks, separate q/k/v projections, causal
scaled_dot_product_attention, GELU (tanh), tied output layer, cross-entropy at every token),
forward and backward on one sequence of T tokens. Prints FlopCounterMode's total and per
operator, for docs/transformers.md.

    python benches/gpt_flopcounter.py VOCAB WIDTH HEADS LAYERS CONTEXT TOKENS
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        t, d = x.shape[1], x.shape[2]
        h = self.ln1(x)
        split = lambda y: y.view(1, t, self.heads, d // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(
            split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=True
        )
        x = x + self.proj(a.transpose(1, 2).reshape(1, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, d, heads, layers, context):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe[: ids.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.T


vocab, d, heads, layers, context, t = map(int, sys.argv[1:7])
torch.manual_seed(0)
model = Gpt(vocab, d, heads, layers, context)
print("parameters", sum(p.numel() for p in model.parameters()))
ids = torch.randint(vocab, (1, t + 1))
with FlopCounterMode(display=False) as counter:
    logits = model(ids[:, :t])
    loss = F.cross_entropy(logits.view(t, vocab), ids[0, 1:])
    loss.backward()
print("total", counter.get_total_flops())
for op, n in counter.get_flop_counts()["Global"].items():
    print(op, n)
