#!/usr/bin/env python
"""Train the vtwctl "demo" model: a small, stock LlavaForConditionalGeneration for the "shapes" benchmark.

CPU only, seeded and staged (as LLaVA is built, plus a shortcut that makes the decoder stages cheap):

  P1 / PK / PM / P9  decoder on *compact pseudo images*: the exact eval prompt (chat template), but the image
           is 9 pseudo visual tokens, one per grid cell, E[<image>] + E[colour] + E[shape] + E[cell] (sums of the
           decoder's own word embeddings; "none" for empty cells). A curriculum: P1 one object per scene; PK
           only the short-answer lookups and counting (--kinds-pk), where the question-word -> visual-token
           binding forms first; PM only multiple choice (--kinds-pm); P9 every kind. Batch 64, lr 1e-3.
  P        the same with the real layout: 144 pseudo tokens (each patch carries its cell's token).
  V        CLIP tower + projector learn to map the real image to those pseudo tokens (MSE, plus throwaway
           per-patch classification heads), decoder frozen.
  F        joint fine-tune on real images in the exact eval format, all parts trainable (optional text-only
           replay); its checkpoints replace the model after V only when better on validation. It made
           validation worse in every try so far; the shipped model skips it (docs/demo.md).
  (T)      optional text-only warm-up with the scene as ScienceQA "Context:" (off by default).

Every training image carries --turns questions (LLaVA-style multi-turn); answers are supervised with EOS.
Token embeddings are initialised with std --emb-std (0.02, Llama's own): with std 1.0 (the first shipped
model) the decoder never learned to bind a question word to a visual token (docs/demo.md).
``--resume DIR`` continues stage F (named F2) from a saved model; ``--init DIR`` runs the stages again from
a saved model (the shipped model is three passes: docs/demo.md, "Exact commands").

Finally the test split is answered with greedy ``generate(max_new_tokens=5)`` through the stock
processor/chat template and scored with ``vtwctl.demo.shapes.score``.

Writes the model + processor into src/vtwctl/demo/model/ (after stage V, during F and at the end) and
src/vtwctl/demo/model/training_metrics.json. The exact commands of the shipped model are in docs/demo.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vtwctl.demo import shapes  # noqa: E402

DEFAULT_OUT = ROOT / "src" / "vtwctl" / "demo" / "model"
PATCH = 8
N_IMG_TOK = (shapes.IMAGE_SIZE // PATCH) ** 2  # 144
N_CELLS = 9  # compact pseudo image: one token per grid cell (stage P9 only)

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
WORD_RE = r"[^\s]+"


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------------------------------- tokenizer
def split_words(text: str) -> list[str]:
    """Same splitting as the tokenizer's normaliser + pre-tokeniser (lowercase, whitespace, punctuation)."""
    out = []
    for w in text.lower().split():
        out.extend(p for p in re.split(r"([^\w'\-])", w) if p)
    return out


def build_vocab() -> list[str]:
    words: set[str] = set()
    for s in [" ".join(shapes.COLOURS), " ".join(shapes.SHAPES), " ".join(shapes.CELLS), "1 2 3 4 5 none"]:
        words.update(split_words(s))
    words.update(split_words("USER: ASSISTANT: A. B. C. D. E. yes no Context: image colour shape object"))
    words.update([",", "(", ")", "!", '"', ";", "/", "-", "'", "*"])  # common punctuation, not used in prompts
    for i in range(3000):
        s = shapes.make_sample("train", i, 12345, hint=True)
        words.update(split_words(s["question"]))
        words.update(split_words(s["answer"]))
    return SPECIALS + sorted(words)


def build_processor(vocab: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^\w'\-]"), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", ids["<s>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=512,
        chat_template=CHAT_TEMPLATE,
    )
    improc = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": shapes.IMAGE_SIZE},
        resample=3,
        do_center_crop=True,
        crop_size={"height": shapes.IMAGE_SIZE, "width": shapes.IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    proc = LlavaProcessor(
        image_processor=improc,
        tokenizer=hf_tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return proc


def build_model(vocab: list[str], args):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    ids = {w: i for i, w in enumerate(vocab)}
    vcfg = CLIPVisionConfig(
        hidden_size=args.vision_width,
        intermediate_size=args.vision_width * 4,
        num_hidden_layers=args.vision_layers,
        num_attention_heads=4,
        image_size=shapes.IMAGE_SIZE,
        patch_size=PATCH,
        num_channels=3,
        hidden_act="quick_gelu",
        projection_dim=args.vision_width,
    )
    tcfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=args.width,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.width // 64,
        num_key_value_heads=args.width // 64,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
    )
    cfg = LlavaConfig(
        vision_config=vcfg,
        text_config=tcfg,
        image_token_index=ids["<image>"],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=N_IMG_TOK,
    )
    cfg.pad_token_id = ids["<pad>"]
    model = LlavaForConditionalGeneration(cfg)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = ids["<s>"], ids["</s>"], ids["<pad>"]
    gc.do_sample = False
    gc.max_new_tokens = 5
    return model


# ----------------------------------------------------------------------------------------- data
class Data:
    def __init__(self, proc, vocab):
        self.proc = proc
        self.tok = proc.tokenizer
        self.ids = {w: i for i, w in enumerate(vocab)}
        self.img_id = self.ids["<image>"]
        self.none_id = self.ids["none"]

    def prompt(self, question: str, with_image: bool) -> str:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        return self.proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def encode(self, samples, mode: str):
        """mode: text (no image, question has a Context hint), pseudo, real."""
        with_image = mode != "text"
        n_img = N_CELLS if mode == "pseudo9" else N_IMG_TOK
        seqs, labs = [], []
        for s in samples:
            text = self.prompt(s["question"], with_image)
            p = self.tok(text)["input_ids"]
            a = self.tok(" " + s["answer"], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            if with_image:
                j = p.index(self.img_id)
                p = p[:j] + [self.img_id] * n_img + p[j + 1 :]
            seq, lab = p + a, [-100] * len(p) + a
            # extra turns about the same image (LLaVA-style multi-turn training data): "</s>USER: q ASSISTANT: a</s>"
            for q2, a2 in s.get("turns", []):
                t = self.tok(f"USER: {q2} ASSISTANT:", add_special_tokens=False)["input_ids"]
                a2 = self.tok(" " + a2, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
                seq, lab = seq + t + a2, lab + [-100] * len(t) + a2
            seqs.append(seq)
            labs.append(lab)
        L = max(map(len, seqs))
        B = len(seqs)
        input_ids = torch.full((B, L), self.tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), -100, dtype=torch.long)
        for b, (sq, lb) in enumerate(zip(seqs, labs)):
            input_ids[b, L - len(sq) :] = torch.tensor(sq)
            attn[b, L - len(sq) :] = 1
            labels[b, L - len(sq) :] = torch.tensor(lb)
        batch = {"input_ids": input_ids, "attention_mask": attn, "labels": labels}
        if mode in ("pseudo", "pseudo9", "targets"):
            batch["pseudo_ids"] = self.pseudo_ids(samples, compact=mode == "pseudo9")
        if mode == "real" or mode == "targets":
            batch["pixel_values"] = self.proc.image_processor(
                [s["image"] for s in samples], return_tensors="pt"
            )["pixel_values"]
        return batch

    def pseudo_ids(self, samples, compact=False):
        """Vocab ids whose embeddings sum to the pseudo visual token of each patch (or of each cell)."""
        out = torch.empty((len(samples), N_CELLS if compact else N_IMG_TOK, 4), dtype=torch.long)
        for b, s in enumerate(samples):
            rows = []
            labels = shapes.patch_labels(s["scene"], shapes.IMAGE_SIZE // 3 if compact else PATCH)
            for colour, shape, cell in labels:
                rows.append(
                    [
                        self.img_id,
                        self.ids[colour] if colour else self.none_id,
                        self.ids[shape] if shape else self.none_id,
                        self.ids[cell],
                    ]
                )
            out[b] = torch.tensor(rows)
        return out


def patch_class_targets(samples):
    colours = list(shapes.COLOURS)
    c_t, s_t, p_t = [], [], []
    for s in samples:
        lab = shapes.patch_labels(s["scene"], PATCH)
        c_t.append([colours.index(c) + 1 if c else 0 for c, _, _ in lab])
        s_t.append([shapes.SHAPES.index(x) + 1 if x else 0 for _, x, _ in lab])
        p_t.append([shapes.CELLS.index(p) for _, _, p in lab])
    return torch.tensor(c_t), torch.tensor(s_t), torch.tensor(p_t)


# ----------------------------------------------------------------------------------------- model passes
def lm_logits_pseudo(model, batch):
    lm = model.model.language_model
    emb_layer = lm.embed_tokens
    emb = emb_layer(batch["input_ids"])
    pseudo = emb_layer(batch["pseudo_ids"]).sum(-2)  # B,144,H
    mask = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(mask.expand_as(emb), pseudo.to(emb.dtype))
    h = lm(inputs_embeds=emb, attention_mask=batch["attention_mask"]).last_hidden_state
    return h


def answer_loss(model, batch, mode):
    labels = batch["labels"]
    if mode == "real":
        h = model.model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            attention_mask=batch["attention_mask"],
        ).last_hidden_state
    elif mode in ("pseudo", "pseudo9"):
        h = lm_logits_pseudo(model, batch)
    else:
        h = model.model.language_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    # predict token t from position t-1, only where there is a label
    tgt = labels[:, 1:]
    sel = tgt != -100
    logits = model.lm_head(h[:, :-1][sel])
    gold = tgt[sel]
    loss = F.cross_entropy(logits, gold)
    # per-sample exact match (all answer tokens + EOS)
    hit = (logits.argmax(-1) == gold).float()
    per = torch.zeros(labels.shape[0]).index_add_(0, sel.nonzero()[:, 0], 1 - hit)
    return loss, (per == 0)


def pseudo_targets(model, pseudo_ids):
    with torch.no_grad():
        return model.model.language_model.embed_tokens(pseudo_ids).sum(-2)


def vision_features(model, pixel_values):
    cfg = model.config
    out = model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    feats = out.hidden_states[cfg.vision_feature_layer][:, 1:]
    return feats, model.model.multi_modal_projector(feats)


# ----------------------------------------------------------------------------------------- training utils
class Stream:
    """Deterministic stream of training samples (train split, disjoint index ranges per stage)."""

    def __init__(self, base: int, seed: int, hint: bool = False, turns: int = 1, n_objects: int | None = None,
                 kinds: set[str] | None = None, mix: float = 0.0):
        self.n_objects = n_objects
        self.kinds = kinds  # keep only these "format/kind" samples
        self.mix = mix  # ... and each other sample with this probability
        self.i = base
        self.seed = seed
        self.hint = hint
        self.turns = turns

    def one(self, i):
        s = shapes.make_sample("train", i, self.seed, hint=self.hint, n_objects=self.n_objects)
        if self.turns > 1:
            scene = json.loads(s["scene"])
            rng = random.Random(f"turns:{self.seed}:{i}")
            s["turns"] = []
            for _ in range(self.turns - 1):
                spec = shapes._make_spec(rng, scene, rng.choice(shapes.FORMATS), None)
                s["turns"].append((shapes.format_prompt(spec), shapes.answer_from_scene(scene, spec)))
        return s

    def take(self, n):
        out = []
        while len(out) < n:
            s = self.one(self.i)
            self.i += 1
            if (self.kinds is None or f"{s['format']}/{s['kind']}" in self.kinds
                    or (self.mix and random.Random(f"mix:{self.seed}:{self.i}").random() < self.mix)):
                out.append(s)
        return out


def make_opt(groups, lr):
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)


def lr_at(step, total, warmup=50, floor=0.1):
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


@torch.no_grad()
def evaluate_tf(model, data, samples, mode, bs=32, per_kind=True):
    """Teacher-forced exact-match accuracy per format (== greedy answer + EOS)."""
    model.eval()
    res: dict[str, list[bool]] = {}
    kinds: dict[str, list[bool]] = {}
    for i in range(0, len(samples), bs):
        chunk = samples[i : i + bs]
        batch = data.encode(chunk, mode)
        _, ok = answer_loss(model, batch, mode)
        for s, o in zip(chunk, ok.tolist()):
            res.setdefault(s["format"], []).append(bool(o))
            kinds.setdefault(f"{s['format']}/{s['kind']}", []).append(bool(o))
    model.train()
    accs = {f: round(sum(v) / len(v), 4) for f, v in sorted(res.items())}
    accs["overall"] = round(sum(sum(v) for v in res.values()) / sum(len(v) for v in res.values()), 4)
    if per_kind:
        accs["per_kind"] = {k: round(sum(v) / len(v), 3) for k, v in sorted(kinds.items())}
    return accs


@torch.no_grad()
def evaluate_generate(model, proc, samples):
    """The user path: chat template + processor + greedy generate(max_new_tokens=5) + shapes.score."""
    model.eval()
    res: dict[str, list[bool]] = {}
    chance: dict[str, list[float]] = {}
    preds = []
    for s in samples:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s["question"]}]}]
        text = proc.apply_chat_template(msgs, add_generation_prompt=True)
        inputs = proc(images=s["image"], text=text, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        pred = proc.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        ok = shapes.score(s["format"], pred, s["answer"])
        res.setdefault(s["format"], []).append(ok)
        chance.setdefault(s["format"], []).append(s["chance"])
        preds.append({"id": s["id"], "format": s["format"], "answer": s["answer"], "pred": pred, "ok": ok})
    model.train()
    out = {}
    for f in sorted(res):
        out[f] = {
            "accuracy": round(sum(res[f]) / len(res[f]), 4),
            "chance": round(sum(chance[f]) / len(chance[f]), 4),
            "n": len(res[f]),
        }
    by_kind: dict[str, list[bool]] = {}
    for s, p in zip(samples, preds):
        by_kind.setdefault(f"{s['format']}/{s['kind']}", []).append(p["ok"])
    out["per_kind"] = {k: {"accuracy": round(sum(v) / len(v), 4), "n": len(v)} for k, v in sorted(by_kind.items())}
    allr = [x for v in res.values() for x in v]
    allc = [x for v in chance.values() for x in v]
    out["overall"] = {
        "accuracy": round(sum(allr) / len(allr), 4),
        "chance": round(sum(allc) / len(allc), 4),
        "n": len(allr),
    }
    return out, preds


def save(model, proc, out_dir: Path, metrics: dict):
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    proc.save_pretrained(tmp)
    (tmp / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


# ----------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vision-width", type=int, default=96)
    ap.add_argument("--vision-layers", type=int, default=3)
    ap.add_argument("--steps-text", type=int, default=0)
    ap.add_argument("--steps-p1", type=int, default=100, help="curriculum: compact pseudo images, 1 object")
    ap.add_argument("--steps-pk", type=int, default=400, help="curriculum: compact pseudo images, --kinds-pk only")
    ap.add_argument("--kinds-pk", default="short/colour_of_shape,short/shape_of_colour,short/shape_at,short/count")
    ap.add_argument("--steps-pm", type=int, default=500, help="curriculum: compact pseudo images, --kinds-pm only")
    ap.add_argument("--kinds-pm", default="mc/colour_of_shape,mc/shape_of_colour,mc/count,mc/position_of")
    ap.add_argument("--steps-pf", type=int, default=0,
                    help="curriculum: compact pseudo images, --kinds-pf plus each other sample with P --mix-pf")
    ap.add_argument("--kinds-pf", default="short/shape_at,yesno/shape_at,mc/position_of")
    ap.add_argument("--mix-pf", type=float, default=0.3)
    ap.add_argument("--shuffle-cells", action="store_true",
                    help="compact stages: shuffle the 9 cell tokens of each training image, so that a cell is "
                         "found by its content (E[cell]), as in the 144-token image, not by its place in the order")
    ap.add_argument("--shrink-qk", type=float, default=1.0,
                    help="with --init: multiply every decoder layer's q/k projections by this first (attention "
                         "logits by its square), so that saturated heads can learn new matches (docs/demo.md)")
    ap.add_argument("--steps-p9", type=int, default=2500)
    ap.add_argument("--bs-p9", type=int, default=64, help="batch of the compact pseudo-image stages (P1, PK, PM, P9)")
    ap.add_argument("--turns-p9", type=int, default=1, help="questions per image in P1, PK, PM, P9")
    ap.add_argument("--steps-pseudo", type=int, default=300)
    ap.add_argument("--lr-pseudo", type=float, default=None, help="lr of stage P (default: --lr)")
    ap.add_argument("--replay-every-p", type=int, default=8, help="stage P: every n-th batch is text-only replay")
    ap.add_argument("--steps-vision", type=int, default=500)
    ap.add_argument("--steps-final", type=int, default=500)
    ap.add_argument("--bs-text", type=int, default=32)
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--bs-vision", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--emb-std", type=float, default=0.02)
    ap.add_argument("--lr-final", type=float, default=2e-4)
    ap.add_argument("--freeze-embeddings", action="store_true",
                    help="stage F: keep the token embeddings (the projector's targets) fixed")
    ap.add_argument("--replay-every", type=int, default=0,
                    help="stage F: every n-th batch is text-only replay (scene as 'Context:'); 0 = none")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--n-val", type=int, default=150, help="validation samples for the periodic evals")
    ap.add_argument("--n-test", type=int, default=600)
    ap.add_argument("--turns", type=int, default=4, help="questions per training image (multi-turn)")
    ap.add_argument("--turns-text", type=int, default=3, help="questions per text-only training scene")
    ap.add_argument("--stop-final", type=int, default=0,
                    help="stop stage F/F2 after this many steps (the lr schedule still spans --steps-final)")
    ap.add_argument("--resume", type=Path, default=None,
                    help="load model+processor (and metrics) from this dir and run only stage F (named F2) + test")
    ap.add_argument("--init", type=Path, default=None,
                    help="start every stage from the model saved in this dir instead of a random init "
                         "(stages with 0 steps are skipped; samples come from --seed's streams)")
    ap.add_argument("--bench", action="store_true", help="time a few steps of each stage and exit")
    ap.add_argument("--deadline-min", type=float, default=0.0, help="if >0: shorten stages P/F to finish in time")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t0 = time.time()
    deadline = t0 + args.deadline_min * 60 if args.deadline_min > 0 else None

    fresh = args.resume is None
    prev_metrics: dict = {}
    if fresh and args.init is None:
        vocab = build_vocab()
        proc = build_processor(vocab)
        model = build_model(vocab, args)
    else:  # continue from a saved model: stage F only (--resume) or every stage (--init)
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        src = str(args.resume or args.init)
        proc = AutoProcessor.from_pretrained(src)
        model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
        tv = proc.tokenizer.get_vocab()
        vocab = sorted(tv, key=tv.get)
        mpath = Path(src) / "training_metrics.json"
        prev_metrics = json.loads(mpath.read_text()) if mpath.exists() else {}
    # Token embeddings: Llama's std 0.02 by default. With std 1.0 (the first shipped model) the decoder learned
    # counting but never bound a question word to a visual token (colour-of-shape stayed at "any present
    # colour"); with 0.02, lr 1e-3 and batch 64 the same probe reaches 1.0 in 100 steps (docs/demo.md).
    if fresh and args.init is None:
        nn.init.normal_(model.model.language_model.embed_tokens.weight, std=args.emb_std)
    if args.shrink_qk != 1.0:
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                layer.self_attn.q_proj.weight.mul_(args.shrink_qk)
                layer.self_attn.k_proj.weight.mul_(args.shrink_qk)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"vocab {len(vocab)}  params {n_params/1e6:.2f}M  threads {args.threads}")
    data = Data(proc, vocab)

    # sanity: our encoding == the stock processor's
    s0 = shapes.make_sample("validation", 0, args.seed)
    ref = proc(images=s0["image"], text=data.prompt(s0["question"], True), return_tensors="pt")
    mine = data.encode([s0], "real")
    k = int(mine["labels"][0].ne(-100).sum())
    assert mine["input_ids"][0, :-k].tolist() == ref["input_ids"][0].tolist(), "encoding mismatch"
    assert torch.equal(mine["pixel_values"], ref["pixel_values"])
    n_img = int((ref["input_ids"] == model.config.image_token_id).sum())
    log(f"prompt tokens {ref['input_ids'].shape[1]} (image {n_img}, text {ref['input_ids'].shape[1] - n_img})")

    val = shapes.generate("validation", args.n_val, args.seed)
    val_text = [shapes.make_sample("validation", i, args.seed, hint=True) for i in range(args.n_val)]
    metrics = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "params": n_params,
        "vocab_size": len(vocab),
        "image_tokens": n_img,
        "stages": {},
        "curves": [],
    }
    t_offset = 0.0
    if prev_metrics:
        metrics["runs"] = prev_metrics.get("runs", [prev_metrics["config"]]) + [metrics["config"]]
        if args.init is not None:  # a second full pass: keep the first pass's stages apart
            metrics["stages_before_init"] = prev_metrics.get("stages_before_init", []) + [prev_metrics["stages"]]
        else:
            metrics["stages"] = prev_metrics["stages"]
        metrics["curves"] = prev_metrics["curves"]
        t_offset = prev_metrics.get("train_minutes", metrics["curves"][-1]["minutes"] if metrics["curves"] else 0)
        metrics["previous_test"] = prev_metrics.get("test")

    def record(stage, step, mode, loss):
        samples = val_text if mode == "text" else val
        acc = evaluate_tf(model, data, samples, mode)
        row = {"stage": stage, "step": step, "minutes": round(t_offset + (time.time() - t0) / 60, 2), "loss": loss,
               "val_mode": mode, "val_acc": acc}
        metrics["curves"].append(row)
        log(f"[{stage}] step {step} loss {loss:.4f} val({mode}) {acc}")
        return acc

    shuffle_gen = torch.Generator().manual_seed(args.seed)

    def dec_params():
        return list(model.model.language_model.parameters()) + list(model.lm_head.parameters())

    # ---------------------------------------------------------------- stage T: text-only
    def run_lm_stage(stage, mode, steps, bs, lr, stream, params, replay=None, replay_every=0):
        opt = make_opt([{"params": params}], lr)
        tstage = time.time()
        ema = None
        total = steps
        for step in range(steps):
            if stage in ("F", "F2") and args.stop_final and step >= args.stop_final:
                log(f"[{stage}] --stop-final: stopping at step {step}")
                total = step
                break
            if deadline and stage in ("P", "F", "F2") and step > 50:
                # keep enough time for later stages: stop P/F early if running late
                left = deadline - time.time()
                need = {"P": 0.45, "F": 0.06, "F2": 0.06}[stage] * args.deadline_min * 60
                if stage != "P":
                    need = max(need, 240.0)  # the test evaluation takes a few minutes
                if left < need:
                    log(f"[{stage}] deadline: stopping at step {step}")
                    total = step
                    break
            for g in opt.param_groups:
                g["lr"] = lr * lr_at(step, steps)
            if replay is not None and replay_every and step % replay_every == replay_every - 1:
                batch = data.encode(replay.take(bs), "text")
                loss, _ = answer_loss(model, batch, "text")
            else:
                batch = data.encode(stream.take(bs), mode)
                if mode == "pseudo9" and args.shuffle_cells:
                    perm = torch.argsort(torch.rand(batch["pseudo_ids"].shape[:2], generator=shuffle_gen), dim=1)
                    batch["pseudo_ids"] = batch["pseudo_ids"].gather(1, perm[..., None].expand_as(batch["pseudo_ids"]))
                loss, _ = answer_loss(model, batch, mode)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if args.bench and step == 4:
                log(f"[{stage}] bench {(time.time() - tstage) / 5:.3f} s/step (bs {bs})")
                return
            if (step + 1) % args.eval_every == 0 or step + 1 == steps:
                acc = record(stage, step + 1, mode, round(ema, 4))
                if stage not in ("F", "F2"):  # a checkpoint, so that a stopped run loses little
                    save(model, proc, args.out.with_name(args.out.name + "_last"), metrics)
                if stage in ("F", "F2"):
                    metrics["stages"][stage] = {"steps": step + 1, "minutes": round((time.time() - tstage) / 60, 2)}
                    if keep_if_best(stage, step + 1, acc):
                        log(f"[{stage}] step {step + 1}: best so far on validation, saved")
        metrics["stages"][stage] = {"steps": total, "minutes": round((time.time() - tstage) / 60, 2)}

    if fresh and args.steps_text:
        log("stage T: text-only warm-up")
        run_lm_stage("T", "text", args.steps_text, args.bs_text, args.lr,
                     Stream(10_000_000, args.seed, hint=True, turns=args.turns_text), dec_params())
    # the compact pseudo-image curriculum: (stage, steps, stream base, objects per scene, kinds, what)
    curriculum = [
        ("P1", args.steps_p1, 70_000_000, 1, None, "one object per scene"),
        ("PK", args.steps_pk, 90_000_000, None, args.kinds_pk, f"kinds {args.kinds_pk}"),
        ("PM", args.steps_pm, 95_000_000, None, args.kinds_pm, f"kinds {args.kinds_pm}"),
        ("PF", args.steps_pf, 97_000_000, None, args.kinds_pf, f"kinds {args.kinds_pf} + others at {args.mix_pf}"),
        ("P9", args.steps_p9, 60_000_000, None, None, "every kind"),
    ]
    for stage, steps, base, n_objects, kinds, what in curriculum:
        if fresh and steps:
            log(f"stage {stage}: compact pseudo images (one token per grid cell), {what}")
            stream = Stream(base, args.seed, turns=args.turns_p9, n_objects=n_objects,
                            kinds=set(kinds.split(",")) if kinds else None, mix=args.mix_pf if stage == "PF" else 0.0)
            run_lm_stage(stage, "pseudo9", steps, args.bs_p9, args.lr, stream, dec_params())
    if fresh and args.steps_pseudo:
        log("stage P: pseudo-image tokens")
        run_lm_stage("P", "pseudo", args.steps_pseudo, args.bs, args.lr_pseudo or args.lr,
                     Stream(0, args.seed, turns=args.turns),
                     dec_params(), replay=Stream(20_000_000, args.seed, hint=True, turns=args.turns_text),
                     replay_every=args.replay_every_p)

    # ---------------------------------------------------------------- stage V: vision tower + projector
    log("stage V: vision tower + projector -> pseudo tokens")
    heads = nn.ModuleDict(
        {
            "colour": nn.Linear(args.vision_width, len(shapes.COLOURS) + 1),
            "shape": nn.Linear(args.vision_width, len(shapes.SHAPES) + 1),
            "cell": nn.Linear(args.vision_width, len(shapes.CELLS)),
        }
    )
    vparams = (
        list(model.model.vision_tower.parameters())
        + list(model.model.multi_modal_projector.parameters())
        + list(heads.parameters())
    )
    opt = make_opt([{"params": vparams}], 2e-3)
    vstream = Stream(30_000_000, args.seed)
    tv = time.time()
    vval = shapes.generate("validation", 64, args.seed)
    vval_b = data.encode(vval, "targets")
    for step in range(args.steps_vision if fresh else 0):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * lr_at(step, args.steps_vision)
        samples = vstream.take(args.bs_vision)
        b = data.encode(samples, "targets")
        tgt = pseudo_targets(model, b["pseudo_ids"])
        feats, proj = vision_features(model, b["pixel_values"])
        ct, st, pt = patch_class_targets(samples)
        mse = F.mse_loss(proj, tgt) / tgt.pow(2).mean()
        ce = (
            F.cross_entropy(heads["colour"](feats).flatten(0, 1), ct.flatten())
            + F.cross_entropy(heads["shape"](feats).flatten(0, 1), st.flatten())
            + F.cross_entropy(heads["cell"](feats).flatten(0, 1), pt.flatten())
        )
        loss = mse + 0.3 * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vparams, 1.0)
        opt.step()
        if args.bench and step == 4:
            log(f"[V] bench {(time.time() - tv) / 5:.3f} s/step (bs {args.bs_vision})")
            break
        if (step + 1) % 100 == 0 or step + 1 == args.steps_vision:
            with torch.no_grad():
                tgt_v = pseudo_targets(model, vval_b["pseudo_ids"])
                fv, pv = vision_features(model, vval_b["pixel_values"])
                rel = (F.mse_loss(pv, tgt_v) / tgt_v.pow(2).mean()).item()
                ct, st, _ = patch_class_targets(vval)
                pc = (heads["colour"](fv).argmax(-1) == ct).float().mean().item()
                ps = (heads["shape"](fv).argmax(-1) == st).float().mean().item()
            log(f"[V] step {step + 1} loss {loss.item():.4f} val rel-mse {rel:.4f} "
                f"patch colour {pc:.3f} shape {ps:.3f}")
            metrics["curves"].append({"stage": "V", "step": step + 1, "minutes": round((time.time() - t0) / 60, 2),
                                      "loss": round(loss.item(), 4), "val_rel_mse": round(rel, 5),
                                      "val_patch_colour": round(pc, 4), "val_patch_shape": round(ps, 4)})
    if fresh:
        metrics["stages"]["V"] = {"steps": args.steps_vision, "minutes": round((time.time() - tv) / 60, 2)}
    del heads
    # model selection on validation: the model after V (or the --resume'd one) is the first candidate, F's
    # checkpoints replace it only when better; the last one saved is the one tested
    best = {"overall": -1.0, "stage": None, "step": None}

    def keep_if_best(stage, step, acc):
        if acc["overall"] <= best["overall"]:
            return False
        best.update(overall=acc["overall"], stage=stage, step=step)
        metrics["selected"] = dict(best)
        save(model, proc, args.out, metrics)
        return True

    if fresh and not args.bench:
        keep_if_best("V", args.steps_vision, record("V", args.steps_vision, "real", 0.0))
        log(f"saved (after V) to {args.out}")
    if not fresh and not args.bench:
        keep_if_best("F2", 0, record("F2", 0, "real", 0.0))

    # ---------------------------------------------------------------- stage F: joint fine-tune on real images
    log("stage F: joint fine-tune on real images" + ("" if fresh else f" (continued from {args.resume}: F2)"))
    if args.freeze_embeddings:
        model.model.language_model.embed_tokens.weight.requires_grad_(False)
    run_lm_stage("F" if fresh else "F2", "real", args.steps_final, args.bs, args.lr_final,
                 Stream(40_000_000 if fresh else 80_000_000, args.seed, turns=args.turns),
                 [p for p in model.parameters() if p.requires_grad],
                 replay=Stream(50_000_000, args.seed, hint=True, turns=args.turns_text),
                 replay_every=args.replay_every)
    if args.bench:
        return
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(args.out), dtype=torch.float32)
    log(f"selected on validation: {best}")

    # ---------------------------------------------------------------- test
    log("test: greedy generate on the test split")
    tt = time.time()
    test = shapes.generate("test", args.n_test, args.seed)
    test_res, preds = evaluate_generate(model, proc, test)
    metrics["test"] = test_res
    metrics["test_eval_minutes"] = round((time.time() - tt) / 60, 2)
    metrics["train_minutes"] = round(t_offset + (tt - t0) / 60, 2)
    metrics["total_steps"] = sum(v["steps"] for v in metrics["stages"].values())
    val_res, _ = evaluate_generate(model, proc, shapes.generate("validation", args.n_val, args.seed))
    metrics["validation_generate"] = val_res
    save(model, proc, args.out, metrics)
    log("TEST", json.dumps(test_res))
    log("VAL", json.dumps(val_res))
    log(f"done in {(time.time() - t0) / 60:.1f} min; saved to {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
