"""The model-loading core shared by every command: spec -> model + processor + family + layout.

``load(spec)`` accepts a short name from ``profiles/`` (``llava-1.5-7b``, ``demo``...), a Hugging
Face hub id, or a local directory written by ``save_pretrained``. Models load through stock
transformers classes chosen by ``config.model_type``. The local cache is tried first; the hub only
when it is reachable, so an offline machine gets one clear error instead of a minute of retries.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import profiles
from .engine.families import Adapter, adapter_for
from .errors import ArgumentError, VTWError
from .spec import PROMPT_STYLES

DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}

# Prompt formats for processors that ship without a chat template (keyed by the profile's label).
FALLBACK_TEMPLATES = {
    "llava-1.5": "USER: {vision}\n{prompt} ASSISTANT:",
    "llava-next-vicuna": (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: {vision}\n{prompt} ASSISTANT:"
    ),
    "llava-next-mistral": "[INST] {vision}\n{prompt} [/INST]",
    "video-llava": "USER: {vision}\n{prompt} ASSISTANT:",
}
_PLACEHOLDERS = {"image": "<image>", "video": "<video>"}


# The original LLaVA conversation templates the paper's authors ran (llava/conversation.py of lzhxmu/VTW:
# ``vicuna_v1`` for LLaVA-1.5 and LLaVA-NeXT-vicuna in their lmms-eval model, ``llava_v1`` for
# Video-LLaVA in their VLMEvalKit model), separator style TWO: "{system} USER: {visuals}\n{prompt} ASSISTANT:".
PAPER_SYSTEMS = {
    "vicuna_v1": ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions."),
    "llava_v1": ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions."),
}


def check_prompt_style(style: str) -> None:
    """A VTWError unless ``style`` is a prompt style ("hf" or "paper")."""
    if style not in PROMPT_STYLES:
        raise ArgumentError(f"--prompt-style must be hf or paper, got {style!r}")


def paper_template(profile: dict | None, family: str, text_model_type: str | None) -> str | None:
    """The authors' conversation template for this model, or None when the paper did not run its kind."""
    if profile is not None and "paper_prompt" in profile:
        return profile["paper_prompt"]
    if family in ("llava", "llava_next") and text_model_type == "llama":
        return "vicuna_v1"
    if family == "video_llava":
        return "llava_v1"
    return None


def _offline_message(spec: str) -> str:
    return (f"model {spec} is not in the local cache and the hub cannot be reached; "
            "pass a local directory or pre-download it")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Resolved:
    spec: str
    source: str  # hub id or local directory
    local: bool
    profile: dict | None
    revision: str | None = None


def resolve(spec: str) -> Resolved:
    """Turn a user's model spec into a hub id or local directory (no loading, no network)."""
    if not spec or not str(spec).strip():
        raise VTWError("empty model name")
    spec = str(spec).strip()
    if spec == "demo":
        from .demo import MODEL_DIR

        if not (MODEL_DIR / "config.json").exists():
            raise VTWError(f"the demo model is missing from this installation ({MODEL_DIR})")
        return Resolved(spec, str(MODEL_DIR), True, profiles.find("demo"))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise VTWError(f"{spec} is a directory without a config.json (not written by save_pretrained)")
        return Resolved(spec, str(path.resolve()), True, None)
    prof = profiles.find(spec)
    if prof is not None:
        return Resolved(spec, prof["hub_id"], False, prof, prof.get("revision"))
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1
    if looks_like_path:
        raise VTWError(f"model directory not found: {spec}")
    if "/" not in spec:
        raise VTWError(
            f"unknown model {spec!r}: not a short name ({', '.join(profiles.names())}), "
            "a local directory, or a hub id like org/name"
        )
    return Resolved(spec, spec, False, None)


def _from_pretrained(fn, res: Resolved, **kw):
    """Call a ``from_pretrained`` cache-first; go online only if the hub is reachable."""
    if res.local:
        try:
            return fn(res.source, **kw)
        except (OSError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VTWError(f"cannot load {res.spec}: {first}") from None
    kw = dict(kw, revision=res.revision) if res.revision else kw
    try:
        return fn(res.source, local_files_only=True, **kw)
    except OSError:
        pass
    if not hub_reachable():
        raise VTWError(_offline_message(res.spec)) from None
    try:
        return fn(res.source, **kw)
    except OSError as exc:
        raise VTWError(f"cannot load model {res.spec} from the hub: {str(exc).splitlines()[0]}") from None


_BROKEN = ("safetensor", "deserializ", "incomplete metadata", "header too large", "headertoolarge",
           "metadataincompletebuffer", "invalidheader", "pytorchstreamreader", "unpickling", "truncated",
           "unexpected end", "failed finding central directory")


def _broken_weights(exc: BaseException, res: Resolved) -> str | None:
    """The one line for weights files that are cut short or corrupt (an interrupted download or copy), naming
    the files; None when ``exc`` is something else."""
    text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}".lower()
    if not isinstance(exc, EOFError) and not any(word in text for word in _BROKEN):
        return None
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    where = res.spec
    if res.local:
        files = sorted(p.name for p in Path(res.source).glob("*") if p.suffix in (".safetensors", ".bin", ".pt"))
        if files:
            where = f"{', '.join(str(Path(res.source) / f) for f in files[:3])}" + (" ..." if len(files) > 3 else "")
    return (f"cannot load the weights of {res.spec}: {where} is corrupt or truncated ({type(exc).__name__}: "
            f"{first}); copy or download the model again")


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'map' (several GPUs), 'cuda', 'mps' or 'cpu'; anything else is checked and returned."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "map" if torch.cuda.device_count() > 1 else "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VTWError(f"device {device} requested but CUDA is not available on this machine")
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit():
            raise VTWError(f"unknown device {device!r}; use cuda:N with a GPU number N")
        if int(index) >= torch.cuda.device_count():
            raise VTWError(f"device {device} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise VTWError("device mps requested but MPS (Apple GPU) is not available on this machine")
    if device not in ("cpu", "map", "mps") and not device.startswith("cuda"):
        raise ArgumentError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N, mps or map (device_map='auto')")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda") or device == "map":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPE_NAMES:
        raise ArgumentError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return getattr(torch, DTYPE_NAMES[dtype])


@dataclass
class Loaded:
    """A loaded model with everything the commands need to build inputs and run VTW."""

    model: Any
    processor: Any
    family: str
    spec: str
    source: str
    profile: dict | None
    device: Any
    dtype: Any
    attn_implementation: str
    prompt_style: str = "hf"

    @property
    def adapter(self) -> Adapter:
        return adapter_for(self.model)

    @property
    def name(self) -> str:
        return self.profile["name"] if self.profile else self.spec

    @property
    def num_layers(self) -> int:
        return len(self.adapter.text_model(self.model).layers)

    @property
    def vision_token_ids(self) -> list[int]:
        return self.adapter.vision_token_ids(self.model.config)

    @property
    def takes_video(self) -> bool:
        return self.adapter.takes_video(self.model.config)

    @property
    def marker_token_ids(self) -> list[int]:
        return self.adapter.marker_token_ids(self.model.config)

    @property
    def max_positions(self) -> int | None:
        text = getattr(self.model.config, "text_config", self.model.config)
        return getattr(text, "max_position_embeddings", None)

    def prompt_text(self, prompt: str | list[dict], images: int = 0, videos: int = 0) -> str:
        """``prompt`` wrapped in the model's own chat template (``prompt_style`` "hf") or in the paper
        authors' conversation template ("paper"), with one placeholder per visual.

        ``prompt`` may also be a list of chat content parts (``{"type": "image"}``, ``{"type": "video"}``,
        ``{"type": "text", "text": ...}``) that places the visuals between the text (interleaved);
        ``images``/``videos`` are then ignored.
        """
        if isinstance(prompt, str):
            content = [{"type": "image"}] * images + [{"type": "video"}] * videos + [{"type": "text", "text": prompt}]
        else:
            content = [dict(part) for part in prompt]
        if self.prompt_style == "paper":
            return self.paper_prompt(content)
        conv = [{"role": "user", "content": content}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        label = (self.profile or {}).get("chat_template", "llava-1.5")
        tmpl = FALLBACK_TEMPLATES.get(label, FALLBACK_TEMPLATES["llava-1.5"])
        lead = next((i for i, part in enumerate(content) if part["type"] == "text"), len(content))
        vision = "".join(_PLACEHOLDERS[part["type"]] for part in content[:lead])
        text = "".join(part["text"] if part["type"] == "text" else _PLACEHOLDERS[part["type"]]
                       for part in content[lead:])
        return tmpl.format(vision=vision, prompt=text).replace("{vision}\n", "")

    def paper_prompt(self, content: list[dict]) -> str:
        """The authors' prompt: system, then ``USER: <image>\\n{prompt} ASSISTANT:`` (leading visuals joined
        by spaces, as their lmms-eval model prepends them; inline ones stay where they are)."""
        text_type = getattr(getattr(self.model.config, "text_config", None), "model_type", None)
        name = paper_template(self.profile, self.family, text_type)
        if name is None:
            raise VTWError(f"--prompt-style paper is the authors' template for the models the paper ran "
                           f"(LLaVA-1.5, LLaVA-NeXT-vicuna, Video-LLaVA); {self.name} ({self.family}) has none: "
                           "use --prompt-style hf")
        marks = {"image": getattr(self.processor, "image_token", "<image>"),
                 "video": getattr(self.processor, "video_token", "<video>")}
        lead = next((i for i, part in enumerate(content) if part["type"] == "text"), len(content))
        vision = " ".join(marks[part["type"]] for part in content[:lead])
        text = "".join(part["text"] if part["type"] == "text" else marks[part["type"]] for part in content[lead:])
        question = f"{vision}\n{text}" if vision else text
        return f"{PAPER_SYSTEMS[name]} USER: {question} ASSISTANT:"

    def build_inputs(self, prompts: str | list, images: list | None = None,
                     videos: list | None = None, continuations: list[str] | None = None) -> dict:
        """Tokenised model inputs on the model's device for one prompt per row (left padded).

        ``images``/``videos`` hold one entry per row: None (none), one image (video), or a list of
        them, given to the chat template in order. A prompt is a string (visuals go first) or a list of
        content parts (see ``prompt_text``). ``continuations`` (one string per row) are appended after
        the chat template's generation prompt, for scoring a given answer.
        """
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        per_row = _per_row(images, len(prompts))
        per_row_videos = _per_row(videos, len(prompts))
        texts = []
        for prompt, imgs, vids in zip(prompts, per_row, per_row_videos):
            if not isinstance(prompt, str):
                counts = [sum(part["type"] == t for part in prompt) for t in ("image", "video")]
                if counts != [len(imgs), len(vids)]:
                    raise ValueError(f"the prompt's content parts hold {counts[0]} images and {counts[1]} videos, "
                                     f"the row has {len(imgs)} and {len(vids)}")
            texts.append(self.prompt_text(prompt, len(imgs), len(vids)))
        if continuations is not None:
            texts = [t + c for t, c in zip(texts, continuations, strict=True)]
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if any(per_row):
            # one flat list when every row has at most one image; a list per row otherwise
            kwargs["images"] = [r[0] for r in per_row if r] if max(map(len, per_row)) == 1 else per_row
        vids = [v for row in per_row_videos for v in row]
        if vids:
            kwargs["videos"] = vids
        tok = getattr(self.processor, "tokenizer", None)
        side = getattr(tok, "padding_side", None)
        if tok is not None:
            tok.padding_side = "left"  # for this call only: the caller's tokenizer is given back as it was
        try:
            batch = self.processor(**kwargs)
        except ImportError as exc:  # e.g. transformers' video processors need torchvision
            raise VTWError(f"the {self.family} processor cannot run here: {str(exc).strip().splitlines()[0]}") from None
        finally:
            if tok is not None and side is not None:
                tok.padding_side = side
        return self.to_device(dict(batch))

    def sample_inputs(self, sample) -> dict:
        """Model inputs for one task ``Sample`` (its prompt with its images or video, if any)."""
        return self.build_inputs(sample.prompt, images=[sample.images], videos=[sample.video])

    def to_device(self, batch: dict) -> dict:
        import torch

        out = {}
        for key, val in batch.items():
            if isinstance(val, torch.Tensor):
                val = val.to(self.device)
                if val.is_floating_point():
                    val = val.to(self.dtype)
            out[key] = val
        return out

    def layout(self, input_ids, attention_mask=None) -> dict[str, list[int]]:
        """Per row: vision tokens and text tokens (padding excluded)."""
        import torch

        from .engine.families import vision_mask

        ids = input_ids
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(ids, dtype=torch.bool)
        vision = vision_mask(ids, self.vision_token_ids, valid)
        return {"num_vision_tokens": vision.sum(1).tolist(),
                "num_text_tokens": (valid & ~vision).sum(1).tolist()}


def _per_row(visuals: list | None, rows: int) -> list[list]:
    """One list of visuals per row from None / one visual / a list of visuals per row."""
    if visuals is None:
        return [[] for _ in range(rows)]
    visuals = list(visuals)
    if len(visuals) != rows:
        raise ValueError(f"{len(visuals)} visual entries for {rows} prompts: one entry (None, one, a list) per row")
    return [[] if v is None else list(v) if isinstance(v, (list, tuple)) else [v] for v in visuals]


def load(spec: str = "demo", device: str = "auto", dtype: str = "auto",
         attn_implementation: str | None = None, trust_remote_code: bool = False,
         prompt_style: str = "hf") -> Loaded:
    """Load ``spec`` (short name, hub id or local directory) with its processor.

    ``device``: auto, cpu, cuda, cuda:N, mps, or map (accelerate's ``device_map="auto"`` over
    every visible GPU; also what auto picks with several GPUs). ``dtype``: auto (bf16/fp16 on
    GPU, fp32 on CPU), float32, float16, bfloat16. ``attn_implementation``: eager, sdpa,
    flash_attention_2, or None for the transformers default. ``prompt_style``: "hf" (the model's chat
    template) or "paper" (the authors' LLaVA conversation template, with its system prompt).
    """
    from .engine.compat import ATTENTION_IMPLEMENTATIONS, check_transformers
    from .engine.compat import attn_implementation as impl_of

    check_prompt_style(prompt_style)
    check_transformers()
    if attn_implementation is not None and attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ArgumentError(f"unknown attention implementation {attn_implementation!r}; "
                       f"use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    res = resolve(spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    import transformers

    config = _from_pretrained(transformers.AutoConfig.from_pretrained, res, trust_remote_code=trust_remote_code)
    try:
        adapter = adapter_for(config)
    except ValueError as exc:
        raise VTWError(f"{spec}: {exc}") from None
    if adapter.refused:
        raise VTWError(f"{spec}: {adapter.refused}")
    cls = getattr(transformers, adapter.model_class or "", None) or transformers.AutoModelForImageTextToText
    kw: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if dev == "map":
        kw["device_map"] = "auto"
    try:
        model = _from_pretrained(cls.from_pretrained, res, **kw)
    except ImportError as exc:  # e.g. flash_attn not installed
        raise VTWError(f"cannot load {spec}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        broken = _broken_weights(exc, res)
        if broken is not None:
            raise VTWError(broken) from None
        if isinstance(exc, ValueError):
            raise VTWError(f"cannot load {spec}: {str(exc).splitlines()[0]}") from None
        raise
    if dev != "map":
        model = model.to(dev)
    model.eval()
    processor = _from_pretrained(transformers.AutoProcessor.from_pretrained, res,
                                 trust_remote_code=trust_remote_code)
    first = next(model.parameters())
    impl = impl_of(model)
    loaded = Loaded(model=model, processor=processor, family=adapter.family, spec=spec, source=res.source,
                    profile=res.profile, device=first.device, dtype=first.dtype, attn_implementation=impl,
                    prompt_style=prompt_style)
    if prompt_style == "paper":
        loaded.paper_prompt([])  # refuse now, not after the data are read
    return loaded
