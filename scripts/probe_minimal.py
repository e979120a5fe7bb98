#!/usr/bin/env python
"""Minimal associative-recall probe, independent of the demo code (research tool, not part of the package).

A plain ``transformers.LlamaModel`` (default: the demo decoder's 8 x 256, 4 heads, MLP 384) reads a synthetic
"scene" of 9 visual tokens, each the sum of embeddings E[img] + E[colour] + E[shape] + E[cell] (E[none] twice for
empty cells; 1-3 objects with distinct colours, shapes and cells), then one query token E[shape] and a fixed
filler suffix, and must output the colour of the queried shape from the last position. Training accuracy
(EMA) is printed every 50 steps. One thread; about 0.35 s/step at batch 64.

It reproduces the demo model's lookup plateau and what ends it (docs/demo.md):

    python scripts/probe_minimal.py --emb 0.02                # 0.96 at step 100
    python scripts/probe_minimal.py --emb 1.0                 # 0.59 at step 100, 0.84 at step 300
    python scripts/probe_minimal.py --emb 0.02 --layers 2     # 0.96 at step 100
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--emb", type=float, default=0.02, help="std of the token embeddings")
    ap.add_argument("--prefix", type=int, default=3, help="filler tokens before the scene")
    ap.add_argument("--suffix", type=int, default=1, help="filler tokens between the query and the answer position")
    ap.add_argument("--pad", type=int, default=0, help="random left padding (0..pad) with an attention mask")
    a = ap.parse_args()

    from transformers import LlamaConfig, LlamaModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    n_col, n_shape, n_cell = 6, 5, 9
    img, none = 1, 2
    col0 = 3
    shape0 = col0 + n_col
    cell0 = shape0 + n_shape
    fill0 = cell0 + n_cell
    vocab = fill0 + 40
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=a.width, intermediate_size=a.width * 3 // 2,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                      max_position_embeddings=512)
    lm = LlamaModel(cfg)
    head = nn.Linear(a.width, vocab, bias=False)
    nn.init.normal_(lm.embed_tokens.weight, std=a.emb)

    def batch(bs):
        E = lm.embed_tokens.weight
        xs, ys = [], []
        for _ in range(bs):
            n = random.choice([1, 2, 3])
            cells, cols, shapes = random.sample(range(n_cell), n), random.sample(range(n_col), n), \
                random.sample(range(n_shape), n)
            q = random.randrange(n)
            vis = []
            for c in range(n_cell):
                if c in cells:
                    k = cells.index(c)
                    ids = [img, col0 + cols[k], shape0 + shapes[k], cell0 + c]
                else:
                    ids = [img, none, none, cell0 + c]
                vis.append(E[ids].sum(0))
            pre = E[[fill0 + i for i in range(a.prefix)]]
            suf = E[[fill0 + 10 + i for i in range(a.suffix)]]
            xs.append(torch.cat([pre, torch.stack(vis), E[[shape0 + shapes[q]]], suf]))
            ys.append(col0 + cols[q])
        L = max(len(x) for x in xs) + a.pad
        X = torch.zeros(bs, L, a.width)
        M = torch.zeros(bs, L, dtype=torch.long)
        for b, x in enumerate(xs):
            p = random.randint(0, a.pad)
            X[b, L - len(x) - p : L - p] = x
            M[b, L - len(x) - p : L - p] = 1
        return X, M, torch.tensor(ys)

    params = list(lm.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    t0, loss_ema, acc_ema = time.time(), None, None
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / 50)
        x, m, y = batch(a.bs)
        h = lm(inputs_embeds=x, attention_mask=m).last_hidden_state
        last = m.shape[1] - 1 - m.flip(1).argmax(1)  # last real token of each row
        logits = head(h[torch.arange(len(y)), last])
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hit = (logits.argmax(-1) == y).float().mean().item()
        acc_ema = hit if acc_ema is None else 0.95 * acc_ema + 0.05 * hit
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1} {time.time() - t0:.0f}s loss {loss_ema:.3f} acc {acc_ema:.3f}", flush=True)


if __name__ == "__main__":
    main()
