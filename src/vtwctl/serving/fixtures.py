"""A tiny random LLaVA-1.5 on disk that vLLM's CPU backend can serve (tests and bench; no downloads).

``save_tiny_llava(path)`` builds the model from ``vtwctl.testing``'s config with head_dim 32 (vLLM's
CPU attention supports head sizes 32, 64, 80, ...), saves it with ``save_pretrained`` together
with a word-level tokenizer built offline and a LLaVA processor (32x32 images, 16 vision tokens),
and stores the weights under the hub checkpoints' names (``language_model.model.*``,
``vision_tower.vision_model.*``), which both transformers and stock vLLM load.

Prompts are words ``w3 .. w249`` (ids 3..249); ``<image>`` is id 250.
"""

from __future__ import annotations

import re
from pathlib import Path

WORDS = {f"w{i}": i for i in range(3, 250)}
IMAGE_TOKEN = "<image>"


def tokenizer():
    """A word-level fast tokenizer over the tiny vocabulary (``<s>`` prepended)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from ..testing import BOS_ID, EOS_ID, IMAGE_ID, PAD_ID, VIDEO_ID, VOCAB

    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID, **WORDS, IMAGE_TOKEN: IMAGE_ID, "<video>": VIDEO_ID}
    vocab.update({f"<extra{i}>": i for i in range(VIDEO_ID + 1, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left", model_max_length=4096)
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, "<video>"]})
    return fast


def save_tiny_llava(path: str | Path, num_layers: int = 6, seed: int = 0) -> Path:
    """Write the tiny LLaVA (model, tokenizer, processor) to ``path``; returns it."""
    import torch
    import transformers as tf
    from safetensors.torch import load_file, save_file

    from ..testing import tiny_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = tiny_model("llava", seed=seed, num_layers=num_layers, num_attention_heads=2, num_key_value_heads=1)
    model.config.text_config.head_dim = 32
    model.save_pretrained(path)
    image_processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer(), patch_size=8,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  image_token=IMAGE_TOKEN, chat_template=None)
    processor.save_pretrained(path)
    for file in path.glob("*.safetensors"):
        weights = load_file(file)
        renamed = {hub_name(k): v.contiguous() for k, v in weights.items()}
        save_file(renamed, file, metadata={"format": "pt"})
    torch.manual_seed(seed)
    return path


def hub_name(key: str) -> str:
    """A transformers-5 LLaVA weight name under the hub checkpoints' layout."""
    key = re.sub(r"^model\.language_model\.", "language_model.model.", key)
    key = re.sub(r"^lm_head\.", "language_model.lm_head.", key)
    key = re.sub(r"^model\.multi_modal_projector\.", "multi_modal_projector.", key)
    key = re.sub(r"^(model\.)?vision_tower\.(?!vision_model\.)", "vision_tower.vision_model.", key)
    return key


def prompt(words: list[int], image: bool = True, pre: list[int] | None = None) -> str:
    """``USER:``-style prompt text: ``pre`` words, the image placeholder, then ``words``."""
    parts = [f"w{i}" for i in (pre or [])] + ([IMAGE_TOKEN] if image else []) + [f"w{i}" for i in words]
    return " ".join(parts)
