#!/usr/bin/python3
"""The MHA -> GQA/MQA converter (model/convert.py) against a naive mean-pool.

A random MHA model is written in the project's format, converted to every divisor of n_heads,
and read back: wk and wv must equal the mean of each group's heads computed here with plain
loops over heads and rows, every other tensor must be unchanged, and ./run must load the result
and report the right attention kind. A converted model whose heads are identical within each
group must also compute exactly what the MHA model computes (nothing lost when nothing differs).
Prints `convert: N passed, M failed`; exits non-zero on any failure.
"""
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "model"))

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"SKIPPED: converter test ({e.name} not installed)")
    sys.exit(0)

from checkpoint import read_checkpoint, write_checkpoint  # noqa: E402
from model import Config, Transformer  # noqa: E402

RUN = os.environ.get("RUN_BINARY", os.path.join(REPO, "run"))


def naive_mean_pool(weight, n_heads, n_kv_heads, head_dim):
    """Group g's row r is the average of row r of each head in the group, summed one by one."""
    w = weight.numpy().astype(np.float64)
    group = n_heads // n_kv_heads
    out = np.zeros((n_kv_heads * head_dim, w.shape[1]))
    for g in range(n_kv_heads):
        for r in range(head_dim):
            total = np.zeros(w.shape[1])
            for member in range(group):
                head = g * group + member
                total += w[head * head_dim + r]
            out[g * head_dim + r] = total / group
    return out


def main():
    torch.manual_seed(7)
    cfg = Config(dim=64, hidden_dim=96, n_layers=2, n_heads=8, n_kv_heads=8, head_dim=8,
                 vocab_size=300, seq_len=32, shared_classifier=False)
    mha = Transformer(cfg).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.uniform_(-0.3, 0.3)
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok      " if ok else "FAILED  ") + what)
        passed += ok
        failed += not ok

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "mha.bin")
        write_checkpoint(mha, src)
        for kv in (4, 2, 1):
            out = os.path.join(d, f"kv{kv}.bin")
            r = subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"), src,
                                out, "--n-kv-heads", str(kv)], capture_output=True, text=True)
            check(r.returncode == 0, f"convert to n_kv_heads {kv}: exit {r.returncode} "
                  f"{r.stderr.strip()}")
            if r.returncode:
                continue
            got, header, _ = read_checkpoint(out)
            check(header["n_kv_heads"] == kv, f"n_kv_heads {kv} in the header")
            worst = 0.0
            for layer_mha, layer_got in zip(mha.layers, got.layers):
                for name in ("wk", "wv"):
                    want = naive_mean_pool(getattr(layer_mha.attention, name).weight.detach(),
                                           cfg.n_heads, kv, cfg.head_dim)
                    have = getattr(layer_got.attention, name).weight.detach().numpy()
                    worst = max(worst, float(np.abs(have - want).max()))
            check(worst <= 1e-6, f"kv {kv}: wk and wv equal the naive group means "
                  f"(max diff {worst:.2e})")
            same = all(torch.equal(a, b) for (na, a), (nb, b) in
                       zip(mha.state_dict().items(), got.state_dict().items())
                       if not (na.endswith("wk.weight") or na.endswith("wv.weight")))
            check(same, f"kv {kv}: every other tensor unchanged")
            if os.path.exists(RUN):
                info = subprocess.run([RUN, out, "--info"], capture_output=True, text=True)
                kind = "MQA" if kv == 1 else "GQA"
                check(info.returncode == 0 and f"attention    {kind}" in info.stdout,
                      f"kv {kv}: ./run --info reports {kind}")

        # Heads identical within their groups: mean-pooling loses nothing, logits agree.
        twin = Transformer(cfg).eval()
        twin.load_state_dict(mha.state_dict())
        with torch.no_grad():
            for layer in twin.layers:
                for name in ("wk", "wv"):
                    w = getattr(layer.attention, name).weight
                    heads = w.view(cfg.n_heads, cfg.head_dim, cfg.dim)
                    heads.copy_(heads[::2].repeat_interleave(2, dim=0))
        src2 = os.path.join(d, "dup.bin")
        write_checkpoint(twin, src2)
        out2 = os.path.join(d, "dup-kv4.bin")
        subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"), src2, out2,
                        "--n-kv-heads", "4"], check=True, capture_output=True)
        gqa, _, _ = read_checkpoint(out2)
        tokens = torch.tensor([[1, 5, 77, 200, 3, 9]])
        with torch.no_grad():
            diff = float((twin(tokens)[0] - gqa(tokens)[0]).abs().max())
        check(diff <= 1e-5, f"duplicated heads: converted logits equal MHA ones "
              f"(max diff {diff:.2e})")

        # Refusals: an input that is not MHA, a count that does not divide, an existing output.
        r = subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"),
                            os.path.join(d, "kv2.bin"), os.path.join(d, "x.bin"),
                            "--n-kv-heads", "1"], capture_output=True, text=True)
        check(r.returncode != 0 and "MHA" in r.stderr, "refuses a GQA input")
        r = subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"), src,
                            os.path.join(d, "y.bin"), "--n-kv-heads", "3"],
                           capture_output=True, text=True)
        check(r.returncode != 0 and "divide" in r.stderr, "refuses n_kv_heads 3 of 8 heads")
        r = subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"), src,
                            os.path.join(d, "kv2.bin"), "--n-kv-heads", "2"],
                           capture_output=True, text=True)
        check(r.returncode != 0 and "exists" in r.stderr, "refuses to overwrite without --force")

    print(f"convert: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
