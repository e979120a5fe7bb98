#!/usr/bin/env python
"""Where does the demo model lose *position*? Probes of each part of a saved model (research tool). One thread.

* ``tower``: linear probes (softmax regression, fitted on train images, scored on validation images) for each
  patch's grid cell, colour and shape, on the CLIP tower's patch features (the layer the projector reads) and on
  the projector's outputs; plus a zero-parameter read-out of the projector outputs through the decoder's own
  word embeddings (argmax over the 9 cell words of <projector output, E[cell]>), i.e. whether the cell is there
  in the form the decoder was trained to read.
* ``qk``: layer 0's content-only attention logits (no RoPE) between a question word (colour, shape or cell) and
  random visual tokens E[<image>] + E[colour] + E[shape] + E[cell]: mean gap between matching and non-matching
  keys in units of the logits' spread, per head.
* ``decoder``: attention from the question's content word to the visual token asked about; teacher-forced
  exact-match accuracy per question kind on validation samples with perfect vision
  (compact 9-token and 144-token pseudo images, scripts/train_demo.py) and with the real images; then, on
  the 9-token pseudo images, what the wrong answers of the position questions are (a present shape at random?
  a cell with no object?); and the norms of the decoder's colour, shape and cell word embeddings.

    python scripts/probe_position.py src/vtwctl/demo/model --what tower
    python scripts/probe_position.py src/vtwctl/demo/model --what decoder
    python scripts/probe_position.py src/vtwctl/demo/model --what qk
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

import train_demo as T  # noqa: E402

from vtwctl.demo import shapes  # noqa: E402


def load(src):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(src)
    model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    tv = proc.tokenizer.get_vocab()
    return model, proc, sorted(tv, key=tv.get)


@torch.no_grad()
def features(model, data, samples, bs=50):
    """Per-patch tower features, projector outputs and (cell, colour, shape) labels, flattened over patches."""
    fs, ps, labs = [], [], []
    for i in range(0, len(samples), bs):
        chunk = samples[i : i + bs]
        b = data.encode(chunk, "targets")
        f, p = T.vision_features(model, b["pixel_values"])
        fs.append(f.flatten(0, 1))
        ps.append(p.flatten(0, 1))
        c, s, cell = T.patch_class_targets(chunk)
        labs.append(torch.stack([cell.flatten(), c.flatten(), s.flatten()], 1))
    return torch.cat(fs), torch.cat(ps), torch.cat(labs)


def linear_probe(x_tr, y_tr, x_va, y_va, n_cls, steps=300):
    torch.manual_seed(0)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_va = (x_tr - mu) / sd, (x_va - mu) / sd
    lin = torch.nn.Linear(x_tr.shape[1], n_cls)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(lin(x_tr), y_tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (lin(x_va).argmax(-1) == y_va).float().mean().item()


def probe_tower(model, data, vocab, n_train, n_val):
    tr = [shapes.make_sample("train", 5_000_000 + i, 0) for i in range(n_train)]
    va = shapes.generate("validation", n_val, 0)
    f_tr, p_tr, y_tr = features(model, data, tr)
    f_va, p_va, y_va = features(model, data, va)
    n_cls = {"cell": 9, "colour": len(shapes.COLOURS) + 1, "shape": len(shapes.SHAPES) + 1}
    out = {}
    for where, (a, b) in {"tower": (f_tr, f_va), "projector": (p_tr, p_va)}.items():
        for j, (name, n) in enumerate(n_cls.items()):
            out[f"{where}/{name}"] = round(linear_probe(a, y_tr[:, j], b, y_va[:, j], n), 4)
    E = model.model.language_model.embed_tokens.weight.detach()
    ids = {w: i for i, w in enumerate(vocab)}
    cell_E = E[[ids[c] for c in shapes.CELLS]]
    zs = (p_va @ cell_E.T).argmax(-1)
    out["projector/cell via <p, E[cell]> (no fit)"] = round((zs == y_va[:, 0]).float().mean().item(), 4)
    # the same read-out on the exact pseudo targets, as the ceiling of that zero-parameter probe
    b = data.encode(va, "targets")
    tgt = T.pseudo_targets(model, b["pseudo_ids"]).flatten(0, 1)
    out["pseudo target/cell via <t, E[cell]> (no fit)"] = round(((tgt @ cell_E.T).argmax(-1) == y_va[:, 0])
                                                               .float().mean().item(), 4)
    out["projector rel-mse to pseudo targets"] = round((F.mse_loss(p_va, tgt) / tgt.pow(2).mean()).item(), 5)
    return out


@torch.no_grad()
def per_kind(model, data, samples, mode):
    res: dict[str, list[bool]] = {}
    for i in range(0, len(samples), 32):
        chunk = samples[i : i + 32]
        _, ok = T.answer_loss(model, data.encode(chunk, mode), mode)
        for s, o in zip(chunk, ok.tolist()):
            res.setdefault(f"{s['format']}/{s['kind']}", []).append(bool(o))
    total = sum(sum(v) for v in res.values()) / sum(len(v) for v in res.values())
    return {"overall": round(total, 3), **{k: round(sum(v) / len(v), 3) for k, v in sorted(res.items())}}


@torch.no_grad()
def position_errors(model, data, vocab, samples):
    """First answer token on the 9-token pseudo images for the position questions, classified."""
    pos = [s for s in samples if s["kind"] in ("shape_at", "position_of")]
    cnt: collections.Counter = collections.Counter()
    for i in range(0, len(pos), 32):
        chunk = pos[i : i + 32]
        b = data.encode(chunk, "pseudo9")
        h = T.lm_logits_pseudo(model, b)
        first = (b["labels"] != -100).float().argmax(1) - 1
        pred = [vocab[j] for j in model.lm_head(h[torch.arange(len(chunk)), first]).argmax(-1).tolist()]
        for s, p in zip(chunk, pred):
            scene, spec, ans = json.loads(s["scene"]), json.loads(s["spec"]), s["answer"].lower()
            n = len(scene)
            if s["format"] == "short":
                tag = "right" if p == ans else ("another present shape" if p in {o["shape"] for o in scene}
                                                else "absent shape")
            elif s["format"] == "mc":
                letters = "abcd"[: len(spec["choices"])]
                if p == ans:
                    tag = "right"
                elif p in letters:
                    cell = spec["choices"][letters.index(p)]
                    tag = "cell of another object" if cell in {o["cell"] for o in scene} else "empty cell"
                else:
                    tag = f"not a letter ({p})"
            else:
                tag = "right" if p == ans else f"said {p} (answer {ans})"
            cnt[(f"{s['format']}/{s['kind']}", n, tag)] += 1
    return {f"{k} | {n} objects | {t}": v for (k, n, t), v in sorted(cnt.items())}


def embedding_norms(model, vocab):
    E = model.model.language_model.embed_tokens.weight.detach()
    ids = {w: i for i, w in enumerate(vocab)}
    out = {}
    for g, ws in {"colour": list(shapes.COLOURS), "shape": shapes.SHAPES, "cell": shapes.CELLS,
                  "letter": list("abcd"), "none": ["none"], "<image>": ["<image>"]}.items():
        out[g] = round(E[[ids[w] for w in ws]].norm(dim=1).mean().item(), 3)
    return out


@torch.no_grad()
def qk_logits(model, vocab, n_keys=400):
    """Layer 0, content only (no RoPE): logit gap of matching vs non-matching visual tokens per query word type."""
    import random

    lm = model.model.language_model
    E = lm.embed_tokens.weight.detach()
    ids = {w: i for i, w in enumerate(vocab)}
    at, norm = lm.layers[0].self_attn, lm.layers[0].input_layernorm
    heads, hd = at.config.num_attention_heads, at.head_dim
    rng = random.Random(0)
    groups = {"colour": list(shapes.COLOURS), "shape": shapes.SHAPES, "cell": shapes.CELLS}
    keys, labs = [], []
    for _ in range(n_keys):
        obj = {g: rng.choice(ws) for g, ws in groups.items()}
        keys.append(E[ids["<image>"]] + sum(E[ids[w]] for w in obj.values()))
        labs.append(obj)
    k = at.k_proj(norm(torch.stack(keys))).view(n_keys, heads, hd)
    out = {}
    for g, ws in groups.items():
        q = at.q_proj(norm(E[[ids[w] for w in ws]])).view(len(ws), heads, hd)
        logit = torch.einsum("ihd,jhd->hij", q, k) / hd**0.5
        match = torch.tensor([[lab[g] == w for lab in labs] for w in ws])
        for h in range(heads):
            m, o, sd = logit[h][match].mean(), logit[h][~match].mean(), logit[h][~match].std()
            out[f"{g} head {h}"] = {"gap/sd": round(((m - o) / sd).item(), 2), "sd": round(sd.item(), 1)}
    return out


@torch.no_grad()
def word_attention(src, vocab, samples):
    """Attention from the question's content word to the 9 visual tokens (2-3 object scenes): the best head's
    weight on the token of the object asked about vs on the other objects, per kind."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
    data = T.Data(AutoProcessor.from_pretrained(src), vocab)
    lm, ids = model.model.language_model, {w: i for i, w in enumerate(vocab)}
    word_of = {"shape_at": "cell", "colour_of_shape": "shape", "shape_of_colour": "colour"}
    todo = [s for s in samples if s["format"] == "short" and s["kind"] in word_of and len(json.loads(s["scene"])) > 1]
    acc: dict[str, list] = {}
    for i in range(0, len(todo), 32):
        chunk = todo[i : i + 32]
        b = data.encode(chunk, "pseudo9")
        emb = lm.embed_tokens(b["input_ids"])
        mask = (b["input_ids"] == model.config.image_token_id).unsqueeze(-1)
        emb = emb.masked_scatter(mask.expand_as(emb), lm.embed_tokens(b["pseudo_ids"]).sum(-2))
        att = torch.stack(lm(inputs_embeds=emb, attention_mask=b["attention_mask"], output_attentions=True)
                          .attentions, 1)  # B, layers, heads, T, T
        img0 = mask[..., 0].float().argmax(1)
        for j, s in enumerate(chunk):
            scene, spec = json.loads(s["scene"]), json.loads(s["spec"])
            key = word_of[s["kind"]]
            cell = spec["cell"] if key == "cell" else next(o["cell"] for o in scene if o[key] == spec[key])
            row = b["input_ids"][j].tolist()
            qpos = max(p for p, t in enumerate(row) if t == ids[spec[key]])
            a = att[j, :, :, qpos, img0[j] : img0[j] + 9]
            others = [shapes.CELLS.index(o["cell"]) for o in scene if o["cell"] != cell]
            acc.setdefault(s["kind"], []).append((a[..., shapes.CELLS.index(cell)], a[..., others].mean(-1)))
    out = {}
    for kind, rows in sorted(acc.items()):
        t = torch.stack([r[0] for r in rows]).mean(0)
        o = torch.stack([r[1] for r in rows]).mean(0)
        layer, head = divmod(int((t - o).argmax()), t.shape[1])
        out[kind] = f"L{layer}H{head}: {t[layer, head]:.3f} on the object asked about vs {o[layer, head]:.3f} on others"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--what", choices=["tower", "decoder", "qk"], required=True)
    ap.add_argument("--n-train", type=int, default=300, help="tower probe: train images (x144 patches)")
    ap.add_argument("--n-val", type=int, default=501, help="validation samples (tower: images)")
    ap.add_argument("--modes", default="pseudo9,pseudo,real", help="decoder probe: input modes")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, proc, vocab = load(str(a.model))
    data = T.Data(proc, vocab)
    if a.what == "tower":
        print(json.dumps(probe_tower(model, data, vocab, a.n_train, min(a.n_val, 200)), indent=1))
        return
    if a.what == "qk":
        print(json.dumps(qk_logits(model, vocab), indent=1))
        return
    val = shapes.generate("validation", a.n_val, 0)
    print("attention from the question word", json.dumps(word_attention(str(a.model), vocab, val), indent=1))
    for mode in a.modes.split(","):
        print(mode, json.dumps(per_kind(model, data, val, mode)), flush=True)
    print(json.dumps(position_errors(model, data, vocab, val), indent=1))
    print("embedding norms", json.dumps(embedding_norms(model, vocab)))


if __name__ == "__main__":
    main()
