#!/usr/bin/env python3
"""Train a small Llama-style decoder on tinyshakespeare (the PyTorch twin in
model.py), with resumable checkpoints under a run directory.

Example (from the repo root):
    /usr/bin/python3 model/train.py --run-dir model/runs/mha --n-kv-heads 8

Data: the first 90% of the corpus' characters is encoded with ONE
sentencepiece call (as run.c encodes a prompt: dummy prefix, no BOS), the last
10% likewise; training windows are sampled at random offsets of the train
tokens, validation uses consecutive non-overlapping windows of the val tokens.

Outputs in the run directory: ckpt.pt (latest, used to resume), best.pt (best
validation loss), loss.csv, loss.png, train.log (when started via nohup).
If the run directory already holds ckpt.pt, training resumes from it.
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from model import Config, Transformer  # noqa: E402

CSV_FIELDS = ["step", "tokens_seen", "train_loss", "val_loss", "val_nats_per_char", "elapsed_s"]


def repo_path(p):
    return p if os.path.isabs(p) else os.path.join(REPO, p)


def load_data(data_path, tokenizer_model, frac=0.9):
    import sentencepiece as spm
    with open(data_path, "r", encoding="utf-8") as f:
        text = f.read()
    n = int(len(text) * frac)
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    train_ids = sp.encode(text[:n])
    val_ids = sp.encode(text[n:])
    return (torch.tensor(train_ids, dtype=torch.long), torch.tensor(val_ids, dtype=torch.long),
            n, len(text) - n, sp.get_piece_size())


def get_batch(data, batch_size, seq_len, gen):
    ix = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=gen)
    x = torch.stack([data[i:i + seq_len] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + seq_len] for i in ix])
    return x, y


@torch.no_grad()
def evaluate(model, data, seq_len, batch_size, max_windows=None):
    """Mean NLL per predicted token over consecutive non-overlapping windows."""
    model.eval()
    n_win = (len(data) - 1) // seq_len
    if max_windows is not None:
        n_win = min(n_win, max_windows)
    starts = list(range(0, n_win * seq_len, seq_len))
    total, count = 0.0, 0
    for b in range(0, len(starts), batch_size):
        s = starts[b:b + batch_size]
        x = torch.stack([data[i:i + seq_len] for i in s])
        y = torch.stack([data[i + 1:i + 1 + seq_len] for i in s])
        _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    model.train()
    return total / count


def lr_at(step, args):
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    p = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    p = min(1.0, p)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * p)) * (args.lr - args.min_lr)


def init_from(model, path):
    """Load weights from an exported .bin or a torch checkpoint (.pt). If the
    source has more kv heads than the model (n_kv_heads dividing it), the kv
    projections are mean-pooled per group (GQA uptraining conversion)."""
    if path.endswith(".pt"):
        ck = torch.load(path, map_location="cpu")
        src = Transformer(Config(**{k: v for k, v in ck["config"].items()}))
        src.load_state_dict(ck["model"])
    else:
        from checkpoint import read_checkpoint
        src, _, _ = read_checkpoint(path)
    sd = src.state_dict()
    dst = model.state_dict()
    cfg, scfg = model.cfg, src.cfg
    for k, v in dst.items():
        w = sd[k]
        if w.shape != v.shape and (k.endswith("wk.weight") or k.endswith("wv.weight")):
            from convert import mean_pool_heads
            if scfg.n_kv_heads % cfg.n_kv_heads:
                raise ValueError(f"--init-from: {cfg.n_kv_heads} kv heads do not divide the "
                                 f"source's {scfg.n_kv_heads}")
            w = mean_pool_heads(w, scfg.n_kv_heads, cfg.n_kv_heads, cfg.head_dim)
        if w.shape != v.shape:
            raise ValueError(f"--init-from: shape mismatch for {k}: {tuple(w.shape)} vs {tuple(v.shape)}")
        dst[k] = w
    model.load_state_dict(dst)
    print(f"initialised weights from {path}", flush=True)


def write_plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["val_loss"] != ""]
    if not rows:
        return
    t = [float(r["tokens_seen"]) / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, [float(r["train_loss"]) for r in rows], label="train (eval mode, sample)")
    ax.plot(t, [float(r["val_loss"]) for r in rows], label="val")
    ax.set_xlabel("tokens seen (M)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt",
                    help="corpus (relative paths from the repo root)")
    ap.add_argument("--tokenizer", default="tokenizer/shakespeare.model")
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--hidden-dim", type=int, default=512)
    ap.add_argument("--n-layers", type=int, default=6)
    ap.add_argument("--n-heads", type=int, default=8)
    ap.add_argument("--n-kv-heads", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--no-shared-classifier", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr", type=float, default=1.5e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta2", type=float, default=0.99)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--eval-interval", type=int, default=200)
    ap.add_argument("--eval-train-windows", type=int, default=32,
                    help="windows of the train split used for the eval-mode train loss")
    ap.add_argument("--log-interval", type=int, default=10)
    ap.add_argument("--ckpt-interval", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=40.0,
                    help="wall bound for this invocation; a checkpoint is written on stop")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads; 1 is as fast as 2 on the 2-core box (the "
                    "BLAS keeps its own threads) and degrades far less when the cores are shared")
    ap.add_argument("--init-from", default=None, help="exported .bin or torch .pt to start from")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    run_dir = repo_path(args.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    best_path = os.path.join(run_dir, "best.pt")
    csv_path = os.path.join(run_dir, "loss.csv")

    train_data, val_data, n_train_chars, n_val_chars, vocab = load_data(
        repo_path(args.data), repo_path(args.tokenizer))
    print(f"data: train {len(train_data)} tokens / {n_train_chars} chars, "
          f"val {len(val_data)} tokens / {n_val_chars} chars, vocab {vocab}", flush=True)
    val_tok_per_char = len(val_data) / n_val_chars

    torch.manual_seed(args.seed)
    cfg = Config(dim=args.dim, hidden_dim=args.hidden_dim, n_layers=args.n_layers,
                 n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                 head_dim=args.dim // args.n_heads, vocab_size=vocab, seq_len=args.seq_len,
                 shared_classifier=not args.no_shared_classifier, dropout=args.dropout)
    model = Transformer(cfg)
    print(f"config: {json.dumps(cfg.to_dict())}", flush=True)
    print(f"parameters: {model.n_params()}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, args.beta2))

    step, tokens_seen, elapsed_before, best_val = 0, 0, 0.0, float("inf")
    rows = []
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu")
        if ck["config"] != cfg.to_dict():
            sys.exit(f"{ckpt_path} was written with another config: {ck['config']}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, tokens_seen = ck["step"], ck["tokens_seen"]
        elapsed_before, best_val = ck["elapsed_s"], ck["best_val"]
        rows = ck["rows"]
        torch.set_rng_state(ck["rng"])
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    elif args.init_from:
        init_from(model, repo_path(args.init_from))

    def save(path):
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "config": cfg.to_dict(), "args": vars(args), "step": step,
                    "tokens_seen": tokens_seen, "elapsed_s": elapsed(),
                    "best_val": best_val, "rows": rows, "rng": torch.get_rng_state()},
                   path + ".tmp")
        os.replace(path + ".tmp", path)

    def write_csv():
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        write_plot(rows, os.path.join(run_dir, "loss.png"),
                   f"{os.path.basename(run_dir.rstrip('/'))}: n_kv_heads={cfg.n_kv_heads}")

    t0 = time.time()

    def elapsed():
        return elapsed_before + time.time() - t0

    def do_eval():
        nonlocal best_val
        tl = evaluate(model, train_data, cfg.seq_len, 32, args.eval_train_windows)
        vl = evaluate(model, val_data, cfg.seq_len, 32)
        npc = vl * val_tok_per_char
        rows.append({"step": step, "tokens_seen": tokens_seen, "train_loss": f"{tl:.5f}",
                     "val_loss": f"{vl:.5f}", "val_nats_per_char": f"{npc:.5f}",
                     "elapsed_s": f"{elapsed():.1f}"})
        print(f"eval step {step}: train {tl:.4f} val {vl:.4f} nats/token, "
              f"val {npc:.4f} nats/char", flush=True)
        if vl < best_val:
            best_val = vl
            save(best_path)
            print(f"  new best val {vl:.4f} -> {best_path}", flush=True)
        write_csv()

    gen = torch.Generator()
    model.train()
    t_log, tok_log = time.time(), 0
    stopped_early = False
    while step < args.max_steps:
        if (time.time() - t0) / 60.0 > args.max_minutes:
            print(f"wall bound of {args.max_minutes} min reached at step {step}", flush=True)
            stopped_early = True
            break
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        gen.manual_seed(args.seed * 1000003 + step)  # data order independent of resumes
        x, y = get_batch(train_data, args.batch_size, cfg.seq_len, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        tokens_seen += x.numel()
        tok_log += x.numel()
        if step % args.log_interval == 0 or step == 1:
            dt = time.time() - t_log
            print(f"step {step}/{args.max_steps} loss {loss.item():.4f} lr {lr:.2e} "
                  f"{tok_log / dt:.0f} tok/s elapsed {elapsed():.0f}s", flush=True)
            t_log, tok_log = time.time(), 0
        if step % args.eval_interval == 0 or step == args.max_steps:
            do_eval()
        if step % args.ckpt_interval == 0 or step == args.max_steps:
            save(ckpt_path)
    if stopped_early:
        save(ckpt_path)
    else:
        if not rows or rows[-1]["step"] != step:
            do_eval()
            save(ckpt_path)
        print(f"done: {step} steps, {tokens_seen} tokens, {elapsed():.0f}s, "
              f"best val {best_val:.4f} nats/token "
              f"({best_val * val_tok_per_char:.4f} nats/char)", flush=True)


if __name__ == "__main__":
    main()
