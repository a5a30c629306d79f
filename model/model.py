"""PyTorch twin of run.c's forward pass.

Written to be read side by side with run.c: the same names (rms_att, wq, wk,
wv, wo, rms_ffn, w1, w2, w3, rms_final, classifier), the same order of
operations, fp32 throughout.

    x = token_embedding[tok]
    for each layer:
        x += wo(attention(rmsnorm(x) * rms_att))
        h  = rmsnorm(x) * rms_ffn
        x += w2(silu(w1 h) * w3 h)
    logits = classifier(rmsnorm(x) * rms_final)

RMSNorm: x / sqrt(mean(x^2) + eps) * weight.
RoPE: adjacent pairs (2i, 2i+1) within each head rotated by
pos * theta^(-2i/head_dim), applied to q and k.
Attention: query head h reads kv head h // (n_heads // n_kv_heads); scores are
scaled by 1/sqrt(head_dim), causally masked, softmaxed.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    dim: int = 256
    hidden_dim: int = 704
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int = 8
    head_dim: int = 32
    vocab_size: int = 1024
    seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    shared_classifier: bool = True
    dropout: float = 0.0  # residual/embedding dropout, training only; not in the checkpoint

    def __post_init__(self):
        assert self.dim == self.n_heads * self.head_dim, "head_dim must equal dim / n_heads"
        assert self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"
        assert self.head_dim % 2 == 0

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # x / sqrt(mean(x^2) + eps) * weight  (same as run.c's rmsnorm)
        ss = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(ss + self.eps) * self.weight


def rope_tables(head_dim, seq_len, theta):
    """cos/sin of pos * theta^(-2i/head_dim) for i in [0, head_dim/2)."""
    i = torch.arange(0, head_dim, 2, dtype=torch.float32)  # 2i
    freq = 1.0 / (theta ** (i / head_dim))
    pos = torch.arange(seq_len, dtype=torch.float32)
    ang = torch.outer(pos, freq)  # (seq_len, head_dim/2)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x, cos, sin):
    """x: (B, T, H, head_dim); rotate adjacent pairs (2i, 2i+1)."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    y0 = x0 * c - x1 * s
    y1 = x0 * s + x1 * c
    return torch.stack((y0, y1), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        # query head h reads kv head h // (n_heads // n_kv_heads)
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.resid_drop(self.wo(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h):
        return self.drop(self.w2(F.silu(self.w1(h)) * self.w3(h)))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.rms_att = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.rms_ffn = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attention(self.rms_att(x), cos, sin)
        x = x + self.ffn(self.rms_ffn(x))
        return x


class Transformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.rms_final = RMSNorm(cfg.dim, cfg.norm_eps)
        self.classifier = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.shared_classifier:
            self.classifier.weight = self.token_embedding.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        # GPT-2 style scaled init of the residual projections
        for n, p in self.named_parameters():
            if n.endswith("wo.weight") or n.endswith("w2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def n_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens, targets=None):
        """tokens: (B, T) int64 with T <= seq_len; positions start at 0.
        Returns logits (B, T, vocab) and, with targets, the mean NLL."""
        B, T = tokens.shape
        assert T <= self.cfg.seq_len
        x = self.drop(self.token_embedding(tokens))
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.rms_final(x)
        logits = self.classifier(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss
