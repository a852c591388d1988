"""The model family: a small GPT-style decoder (nanoGPT-like) whose token embedding W is the object of study.

Token embedding W (V x D) drawn N(0, init_std) in fp32 and only then cast (as the seeds did), learned
positions over the context, pre-LN blocks (causal self-attention + GELU MLP, biases, dropout 0), final
LayerNorm, logits = h @ W.T when tied or h @ E.T when untied. Other weights follow GPT-2's init (N(0, 0.02),
residual projections scaled by 1/sqrt(2 * n_layers), zero biases, LayerNorm 1/0).

All initial values are drawn from one explicit torch.Generator in a fixed order, on the CPU in fp32, so the
initialization depends only on the config and `init_seed` -- not on the device, dtype or global RNG state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_ff)
        self.fc_proj = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
        shape = (B, T, self.n_heads, D // self.n_heads)
        q, k, v = (t.view(shape).transpose(1, 2).float() for t in (q, k, v))
        # causal attention written out in fp32 (rounded to the model's dtype once, at the output, as the fused
        # kernels do): at T = 128 this is 2-3x cheaper than torch's CPU flash kernel, backward included
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D // self.n_heads))
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        a = (torch.softmax(s, dim=-1) @ v).to(x.dtype)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


# --- tagged structure (issue 14) ---------------------------------------------------------------------------
@torch.no_grad()
def place_tagged(W: torch.Tensor, spec: dict, generator: torch.Generator) -> None:
    """Overwrite rows of W (fp32, before the cast) with a tagged structure.

    The 2**k rows `spec["ids"]` become the vertices of a k-cube of edge `scale` in coordinates 0..k-1 (vertex j
    at offset (bit_b(j) − ½)·scale along coordinate b), centred on the first id's initial row ("first") or the
    origin; every other coordinate is the centre's. The `control` rows get the same centre and uniform offsets
    in the same box: the same place and size, no order.
    """
    from experiments.errors import ConfigError

    ids, control = list(spec["ids"]), list(spec.get("control") or [])
    bad = [i for i in ids + control if i >= W.shape[0]]
    if bad:
        raise ConfigError(f"model.tagged: token id {bad[0]} is outside the vocabulary (size {W.shape[0]})")
    k = len(ids).bit_length() - 1
    centre = W[ids[0]].clone() if spec.get("at", "first") == "first" else torch.zeros(W.shape[1])
    bits = torch.tensor([[(j >> b) & 1 for b in range(k)] for j in range(len(ids))], dtype=torch.float32)
    offsets = torch.cat([(bits - 0.5) * spec["scale"],
                         (torch.rand((len(control), k), generator=generator, dtype=torch.float32) - 0.5)
                         * spec["scale"]])
    rows = torch.tensor(ids + control, dtype=torch.long)
    W[rows] = centre
    W[rows, :k] += offsets
# --- end tagged structure -----------------------------------------------------------------------------------


class GPT(nn.Module):
    """`GPT(vocab_size, model_cfg)`; call `init_weights(generator)` before use (the constructor draws nothing)."""

    def __init__(self, vocab_size: int, cfg: dict):
        super().__init__()
        D = cfg["d_model"]
        self.cfg = dict(cfg)
        self.vocab_size = vocab_size
        self.W = nn.Parameter(torch.empty(vocab_size, D))
        self.pos = nn.Parameter(torch.empty(cfg["context"], D))
        self.blocks = nn.ModuleList(Block(D, cfg["n_heads"], cfg["d_ff"]) for _ in range(cfg["n_layers"]))
        self.ln_f = nn.LayerNorm(D)
        self.E = None if cfg["tied"] else nn.Parameter(torch.empty(vocab_size, D))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        std = self.cfg["init_std"]

        def normal_(p: torch.Tensor, s: float) -> None:
            # drawn in fp32 on the CPU, then copied (cast) into the parameter: device/dtype independent
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * s)

        normal_(self.W, std)
        normal_(self.pos, 0.02)
        resid_std = 0.02 / math.sqrt(2 * self.cfg["n_layers"])
        for block in self.blocks:
            for lin, s in ((block.qkv, 0.02), (block.proj, resid_std), (block.fc, 0.02), (block.fc_proj, resid_std)):
                normal_(lin.weight, s)
                lin.bias.zero_()
            for ln in (block.ln1, block.ln2):
                ln.weight.fill_(1.0)
                ln.bias.zero_()
        self.ln_f.weight.fill_(1.0)
        self.ln_f.bias.zero_()
        if self.E is not None:
            normal_(self.E, std)
        if self.cfg.get("tagged"):  # drawn last, so every other initial value is the untagged run's
            place_tagged(self.W, self.cfg["tagged"], generator)

    def output_matrix(self) -> torch.Tensor:
        return self.W if self.E is None else self.E

    def forward(self, idx: torch.Tensor, return_hidden: bool = False):
        """idx (B, T) int64 -> logits (B, T, V), plus the final hidden state h (B, T, D) if asked."""
        T = idx.shape[1]
        x = F.embedding(idx, self.W) + self.pos[:T]
        for block in self.blocks:
            x = block(x)
        h = self.ln_f(x)
        logits = F.linear(h, self.output_matrix())
        return (logits, h) if return_hidden else logits


def flops_per_step(vocab_size: int, cfg: dict, batch_size: int, seq_len: int) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward), for the benchmark's peak share."""
    D, L, F_, T = cfg["d_model"], cfg["n_layers"], cfg["d_ff"], seq_len - 1
    per_token = 2 * (L * (3 * D * D + D * D + 2 * D * F_) + D * vocab_size) + L * 2 * 2 * T * D
    return 3.0 * per_token * batch_size * T
