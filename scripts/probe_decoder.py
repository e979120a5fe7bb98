#!/usr/bin/env python
"""Decoder-learning probes for the demo model (research tool, not part of the package).

Trains only the demo model's 8 x 256 Llama decoder on *compact pseudo images* (9 visual tokens, one per grid
cell, each the sum of the decoder's own word embeddings E[<image>] + E[colour] + E[shape] + E[cell]; see
scripts/train_demo.py), i.e. with perfect vision, and prints teacher-forced exact-match accuracy per question
kind on validation samples. It isolates *why* the decoder is slow to learn the benchmark. One thread.

Examples (each line is one probe of docs/demo.md, "What limits the demo model"):

    python scripts/probe_decoder.py --tag C --kinds short/count --steps 300 --eval 25
    python scripts/probe_decoder.py --tag D --kinds short/colour_of_shape --steps 300 --eval 25
    python scripts/probe_decoder.py --tag G1 --kinds short/colour_of_shape --bare --steps 400 --eval 50
    python scripts/probe_decoder.py --tag A --bs 64 --lr 2e-3 --steps 1500 --minutes 12
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

import train_demo as T  # noqa: E402

from vtwctl.demo import shapes  # noqa: E402

PAIRS = [("shape", "colour"), ("colour", "shape"), ("cell", "shape"), ("shape", "cell"), ("colour", "cell"),
         ("cell", "colour")]


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default="")
    ap.add_argument("--kinds", default="", help="comma list of format/kind (default: all ten kinds)")
    ap.add_argument("--nobj", type=int, default=None, help="objects per scene (default 1-3)")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--turns", type=int, default=1, help="questions per image")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=1e9, help="stop (after an eval) past this wall time")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--emb-std", type=float, default=1.0)
    ap.add_argument("--init", type=float, default=0.02, help="std of every decoder Linear")
    ap.add_argument("--qk-init", type=float, default=0.0, help="std of q/k projections")
    ap.add_argument("--mimetic", type=float, nargs=2, default=None, metavar=("QK", "VO"),
                    help="mimetic init: W_k = W_q (std QK), W_o = W_v^T (std VO)")
    ap.add_argument("--theta", type=float, default=0.0, help="RoPE base (default: the config's 10000)")
    ap.add_argument("--bare", action="store_true", help="question = the bare object word (no template text)")
    ap.add_argument("--desc", type=float, default=0.0, help="P(extra turn: scene description in cell order)")
    ap.add_argument("--aux", type=float, default=0.0, help="P(extra turn: attribute pairs in random order)")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from the decoder of this saved model (e.g. src/vtwctl/demo/model), not a fresh one")
    ap.add_argument("--eval-all", action="store_true", help="evaluate every kind, not only --kinds")
    ap.add_argument("--mix", type=float, default=0.0, help="P(a training sample of any kind, not only --kinds)")
    ap.add_argument("--reinit-qk", default="",
                    help="comma list LAYER:HEAD whose q/k projections are re-drawn (std --init) before training")
    ap.add_argument("--shuffle", action="store_true",
                    help="shuffle the 9 cell tokens of every training pseudo image (no position-by-order shortcut)")
    ap.add_argument("--shrink-qk", type=float, default=1.0,
                    help="multiply every layer's q/k projections by this (attention logits by its square)")
    ap.add_argument("--scale-cells", type=float, default=1.0,
                    help="multiply the 9 cell words' embeddings by this before training")
    ap.add_argument("--binding", type=float, default=0.0,
                    help="add fixed random (colour,shape), (shape,cell), (colour,cell) vectors to visual tokens")
    return ap.parse_args()


def main():
    a = parse()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    a.vision_width, a.vision_layers = 96, 3
    vocab = T.build_vocab()
    proc = T.build_processor(vocab)
    model = T.build_model(vocab, a)
    if a.init_from is not None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        proc = AutoProcessor.from_pretrained(str(a.init_from))
        model = LlavaForConditionalGeneration.from_pretrained(str(a.init_from), dtype=torch.float32)
        tv = proc.tokenizer.get_vocab()
        assert sorted(tv, key=tv.get) == vocab, "vocabulary differs"
    lm = model.model.language_model
    if a.init_from is None:
        for m in lm.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=a.init)
        nn.init.normal_(model.lm_head.weight, std=a.init)
        nn.init.normal_(lm.embed_tokens.weight, std=a.emb_std)
    with torch.no_grad():
        for lh in filter(None, a.reinit_qk.split(",")):
            layer, head = map(int, lh.split(":"))
            at = lm.layers[layer].self_attn
            rows = slice(head * at.head_dim, (head + 1) * at.head_dim)
            at.q_proj.weight[rows] = torch.randn_like(at.q_proj.weight[rows]) * a.init
            at.k_proj.weight[rows] = torch.randn_like(at.k_proj.weight[rows]) * a.init
        for layer in lm.layers:
            layer.self_attn.q_proj.weight *= a.shrink_qk
            layer.self_attn.k_proj.weight *= a.shrink_qk
    if a.scale_cells != 1.0:
        with torch.no_grad():
            lm.embed_tokens.weight[[vocab.index(c) for c in shapes.CELLS]] *= a.scale_cells
    if a.theta:
        head = a.width // (a.width // 64)
        inv = 1.0 / (a.theta ** (torch.arange(0, head, 2, dtype=torch.float) / head))
        lm.rotary_emb.inv_freq, lm.rotary_emb.original_inv_freq = inv, inv.clone()
    with torch.no_grad():
        for layer in lm.layers:
            at = layer.self_attn
            if a.qk_init:
                nn.init.normal_(at.q_proj.weight, std=a.qk_init)
                nn.init.normal_(at.k_proj.weight, std=a.qk_init)
            if a.mimetic:
                nn.init.normal_(at.q_proj.weight, std=a.mimetic[0])
                at.k_proj.weight.copy_(at.q_proj.weight)
                nn.init.normal_(at.v_proj.weight, std=a.mimetic[1])
                at.o_proj.weight.copy_(at.v_proj.weight.t())
    if a.binding:
        g = torch.Generator().manual_seed(123)
        tables = [torch.randn(len(vocab), len(vocab), a.width, generator=g) * a.binding for _ in range(3)]

        def lm_logits_pseudo(model, batch):
            emb = lm.embed_tokens(batch["input_ids"])
            pid = batch["pseudo_ids"]
            c, sh, ce = pid[..., 1], pid[..., 2], pid[..., 3]
            pseudo = lm.embed_tokens(pid).sum(-2) + tables[0][c, sh] + tables[1][sh, ce] + tables[2][c, ce]
            mask = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1)
            emb = emb.masked_scatter(mask.expand_as(emb), pseudo.to(emb.dtype))
            return lm(inputs_embeds=emb, attention_mask=batch["attention_mask"]).last_hidden_state

        T.lm_logits_pseudo = lm_logits_pseudo
    data = T.Data(proc, vocab)
    if a.shuffle:
        plain = data.pseudo_ids
        perm_gen = torch.Generator().manual_seed(7)

        def shuffled(samples, compact=False):
            out = plain(samples, compact)
            if data.training:
                for b in range(out.shape[0]):
                    out[b] = out[b, torch.randperm(out.shape[1], generator=perm_gen)]
            return out

        data.pseudo_ids = shuffled
    data.training = False
    kinds = set(a.kinds.split(",")) if a.kinds else None

    mix_rng = random.Random(1)

    def keep(s, train=False):
        good = kinds is None or f"{s['format']}/{s['kind']}" in kinds or (train and mix_rng.random() < a.mix)
        if good and a.bare:
            s["question"] = json.loads(s["spec"])["shape"]
        return good

    class Stream(T.Stream):
        def take(self, n):
            out = []
            while len(out) < n:
                s = self.one(self.i)
                self.i += 1
                if not keep(s, train=True):
                    continue
                scene = json.loads(s["scene"])
                if a.desc and random.random() < a.desc:
                    d = " , ".join(f"{o['colour']} {o['shape']} {o['cell']}" for o in scene)
                    s.setdefault("turns", []).append(("What is in the image?", d))
                if a.aux and random.random() < a.aux:
                    random.shuffle(scene)
                    f1, f2 = random.choice(PAIRS)
                    s.setdefault("turns", []).append(("What is in the image?", " ".join(f"{o[f1]} {o[f2]}"
                                                                                         for o in scene)))
                out.append(s)
            return out

    val = [s for s in (shapes.make_sample("validation", i, 0, n_objects=a.nobj) for i in range(900))
           if a.eval_all or keep(s)]
    val = val[:501 if a.eval_all else 300]
    stream = Stream(60_000_000, 0, turns=a.turns, n_objects=a.nobj)
    params = list(lm.parameters()) + list(model.lm_head.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)

    def evaluate():
        model.eval()
        res: dict[str, list[bool]] = {}
        with torch.no_grad():
            for i in range(0, len(val), 50):
                chunk = val[i : i + 50]
                _, ok = T.answer_loss(model, data.encode(chunk, "pseudo9"), "pseudo9")
                for s, o in zip(chunk, ok.tolist()):
                    res.setdefault(f"{s['format']}/{s['kind']}", []).append(o)
        model.train()
        total = sum(sum(v) for v in res.values()) / sum(len(v) for v in res.values())
        return round(total, 3), {k: round(sum(v) / len(v), 2) for k, v in sorted(res.items())}

    if a.init_from is not None:
        total, per = evaluate()
        print(f"{a.tag} step 0 acc {total} {per}", flush=True)
    t0, ema = time.time(), None
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = a.lr * T.lr_at(step, a.steps, warmup=a.warmup)
        data.training = True
        loss, _ = T.answer_loss(model, data.encode(stream.take(a.bs), "pseudo9"), "pseudo9")
        data.training = False
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        late = (time.time() - t0) / 60 > a.minutes
        if (step + 1) % a.eval == 0 or late:
            total, per = evaluate()
            print(f"{a.tag} step {step + 1} {(time.time() - t0) / 60:.1f} min loss {ema:.3f} acc {total} {per}",
                  flush=True)
            if late:
                break


if __name__ == "__main__":
    main()
