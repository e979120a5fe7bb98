"""The "shapes" benchmark: a deterministic, seeded generator of small synthetic VQA samples.

Each image is 96x96 px and shows 1-3 coloured shapes, each one inside one cell of an invisible 3x3 grid.
All objects of a scene have distinct shapes and distinct colours, so every question has one right answer.

Three question formats, with prompts in the style of common lmms-eval tasks:

* ``"mc"``: multiple choice in the ScienceQA-IMG (lmms-eval ``scienceqa_img``) prompt format, answer is a letter.
* ``"yesno"``: POPE style yes/no question, answers balanced 50/50.
* ``"short"``: short answer (one word or number), VQAv2/GQA style post prompt.

Chance levels (field ``chance`` of every sample): ``1 / len(choices)`` for mc, ``0.5`` for yes/no and
``1 / number of possible answers of the question type`` for short answers (5 colours, 4 shapes, 3 counts).

Only the standard library and Pillow are imported at module import time; ``datasets`` is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

__all__ = [
    "COLOURS",
    "SHAPES",
    "CELLS",
    "FORMATS",
    "SPLIT_SIZES",
    "IMAGE_SIZE",
    "generate",
    "make_sample",
    "render",
    "as_dataset",
    "export",
    "answer_from_scene",
    "score",
    "patch_labels",
]

IMAGE_SIZE = 96
GRID = 3
CELL_PX = IMAGE_SIZE // GRID  # 32

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ["circle", "square", "triangle", "diamond"]
# row-major names of the 3x3 grid cells
CELLS = ["top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right"]
COUNTS = ["1", "2", "3"]
FORMATS = ["mc", "yesno", "short"]
SPLIT_SIZES = {"train": 20000, "validation": 501, "test": 600}

MC_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SHORT_POST_PROMPT = "\nAnswer the question using a single word or phrase."

# Question kinds per format.
KINDS = {
    "mc": ["colour_of_shape", "shape_of_colour", "count", "position_of"],
    "yesno": ["exists", "shape_at"],
    "short": ["colour_of_shape", "shape_of_colour", "shape_at", "count"],
}
# number of possible answers of each short-answer kind
_SHORT_ANSWER_SPACE = {
    "colour_of_shape": len(COLOURS),
    "shape_of_colour": len(SHAPES),
    "shape_at": len(SHAPES),
    "count": len(COUNTS),
}

_SPLIT_SALT = {"train": "train", "validation": "validation", "test": "test"}
# Scenes are assigned to splits by a hash of their canonical JSON (rejection sampling), so no scene layout
# of one split can ever occur in another one, whatever the seeds and sizes.
_N_BUCKETS = 8
_SPLIT_BUCKETS = {"test": {0}, "validation": {1}, "train": set(range(2, _N_BUCKETS))}


def scene_bucket(scene_json: str) -> int:
    """Hash bucket (0..7) of a canonical scene JSON: 0 = test, 1 = validation, 2..7 = train."""
    return int(hashlib.sha256(scene_json.encode()).hexdigest()[:8], 16) % _N_BUCKETS


def split_of_scene(scene_json: str) -> str:
    b = scene_bucket(scene_json)
    return next(k for k, v in _SPLIT_BUCKETS.items() if b in v)


# --------------------------------------------------------------------------------------------- scenes
def _make_scene(rng: random.Random, n_objects: int | None = None) -> list[dict[str, Any]]:
    n = n_objects if n_objects is not None else rng.randint(1, 3)
    cells = rng.sample(range(len(CELLS)), n)
    shapes = rng.sample(SHAPES, n)
    colours = rng.sample(list(COLOURS), n)
    objs = []
    for cell, shape, colour in zip(cells, shapes, colours):
        size = rng.randint(20, 28)
        slack = (CELL_PX - size) // 2
        row, col = divmod(cell, GRID)
        cx = col * CELL_PX + CELL_PX // 2 + rng.randint(-slack, slack)
        cy = row * CELL_PX + CELL_PX // 2 + rng.randint(-slack, slack)
        objs.append(
            {
                "shape": shape,
                "colour": colour,
                "cell": CELLS[cell],
                "row": row,
                "col": col,
                "x": cx,
                "y": cy,
                "size": size,
            }
        )
    objs.sort(key=lambda o: CELLS.index(o["cell"]))
    return objs


def render(scene: list[dict[str, Any]] | str, jitter_seed: int | str = 0):
    """Render a scene (list of objects or its JSON) to a 96x96 RGB PIL image."""
    from PIL import Image, ImageDraw

    if isinstance(scene, str):
        scene = json.loads(scene)
    rng = random.Random(f"render:{jitter_seed}")
    bg = tuple(255 - rng.randint(0, 20) for _ in range(3))
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), bg)
    draw = ImageDraw.Draw(img)
    for o in scene:
        base = COLOURS[o["colour"]]
        fill = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in base)
        h = o["size"] / 2
        x, y = o["x"], o["y"]
        if o["shape"] == "circle":
            draw.ellipse([x - h, y - h, x + h, y + h], fill=fill)
        elif o["shape"] == "square":
            s = h * 0.88
            draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([(x, y - h), (x + h, y + h * 0.85), (x - h, y + h * 0.85)], fill=fill)
        elif o["shape"] == "diamond":
            draw.polygon([(x, y - h), (x + h, y), (x, y + h), (x - h, y)], fill=fill)
        else:  # pragma: no cover
            raise ValueError(o["shape"])
    return img


def patch_labels(scene: list[dict[str, Any]] | str, patch: int = 8) -> list[tuple[str | None, str | None, str]]:
    """Per-patch (row-major) labels ``(colour or None, shape or None, cell name)`` of the cell a patch is in."""
    if isinstance(scene, str):
        scene = json.loads(scene)
    by_cell = {o["cell"]: o for o in scene}
    n = IMAGE_SIZE // patch
    out = []
    for pr in range(n):
        for pc in range(n):
            cell = CELLS[(pr * patch // CELL_PX) * GRID + (pc * patch // CELL_PX)]
            o = by_cell.get(cell)
            out.append((o["colour"] if o else None, o["shape"] if o else None, cell))
    return out


# --------------------------------------------------------------------------------------------- questions
def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _question_text(spec: dict[str, Any]) -> str:
    kind = spec["kind"]
    if kind == "colour_of_shape":
        q = f"What colour is the {spec['shape']}?"
    elif kind == "shape_of_colour":
        q = f"What shape is the {spec['colour']} object?"
    elif kind == "count":
        q = "How many shapes are there?"
    elif kind == "position_of":
        q = f"Where is the {spec['colour']} {spec['shape']}?"
    elif kind == "exists":
        q = f"Is there a {spec['colour']} {spec['shape']} in the image?"
    elif kind == "shape_at":
        if spec["format"] == "yesno":
            q = f"Is there a {spec['shape']} at the {spec['cell']}?"
        else:
            q = f"What shape is at the {spec['cell']}?"
    else:  # pragma: no cover
        raise ValueError(kind)
    return q


def format_prompt(spec: dict[str, Any], hint: str = "") -> str:
    """The full prompt text (without chat template) of a question spec.

    ``hint`` is the ScienceQA "Context"; lmms-eval omits the ``Context:`` line when the hint is empty,
    and so do we (the benchmark itself never uses a hint; training uses one for text-only warm-up).
    """
    q = _question_text(spec)
    fmt = spec["format"]
    if fmt == "mc":
        context = f"Context: {hint}\n" if hint else ""
        opts = "\n".join(f"{ltr}. {c}" for ltr, c in zip(_letters(len(spec["choices"])), spec["choices"]))
        return f"{context}{q}\n{opts}{MC_POST_PROMPT}"
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{q}{SHORT_POST_PROMPT}"


def _answer_word(scene: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    kind = spec["kind"]
    if kind == "colour_of_shape":
        return next(o["colour"] for o in scene if o["shape"] == spec["shape"])
    if kind == "shape_of_colour":
        return next(o["shape"] for o in scene if o["colour"] == spec["colour"])
    if kind == "count":
        return str(len(scene))
    if kind == "position_of":
        return next(o["cell"] for o in scene if o["colour"] == spec["colour"] and o["shape"] == spec["shape"])
    if kind == "exists":
        ok = any(o["colour"] == spec["colour"] and o["shape"] == spec["shape"] for o in scene)
        return "yes" if ok else "no"
    if kind == "shape_at":
        at = [o for o in scene if o["cell"] == spec["cell"]]
        if spec["format"] == "yesno":
            return "yes" if at and at[0]["shape"] == spec["shape"] else "no"
        return at[0]["shape"]
    raise ValueError(kind)  # pragma: no cover


def answer_from_scene(scene_json: str | list[dict[str, Any]], question_spec: dict[str, Any] | str) -> str:
    """Recompute a sample's answer from its scene description and question spec alone (no image)."""
    scene = json.loads(scene_json) if isinstance(scene_json, str) else scene_json
    spec = json.loads(question_spec) if isinstance(question_spec, str) else question_spec
    word = _answer_word(scene, spec)
    if spec["format"] == "mc":
        return _letters(len(spec["choices"]))[spec["choices"].index(word)]
    return word


def _make_spec(rng: random.Random, scene: list[dict[str, Any]], fmt: str, want_yes: bool | None) -> dict[str, Any]:
    kind = rng.choice(KINDS[fmt])
    spec: dict[str, Any] = {"format": fmt, "kind": kind}
    obj = rng.choice(scene)
    if fmt == "yesno":
        if want_yes is None:
            want_yes = rng.random() < 0.5
        if kind == "exists":
            if want_yes:
                spec.update(colour=obj["colour"], shape=obj["shape"])
            else:
                present = {(o["colour"], o["shape"]) for o in scene}
                # hard negatives: reuse a present colour or shape most of the time
                while True:
                    r = rng.random()
                    colour = obj["colour"] if r < 0.35 else rng.choice(list(COLOURS))
                    shape = obj["shape"] if 0.35 <= r < 0.7 else rng.choice(SHAPES)
                    if (colour, shape) not in present:
                        break
                spec.update(colour=colour, shape=shape)
        else:  # shape_at
            if want_yes:
                spec.update(cell=obj["cell"], shape=obj["shape"])
            else:
                if rng.random() < 0.5:  # right cell, wrong shape
                    spec.update(cell=obj["cell"], shape=rng.choice([s for s in SHAPES if s != obj["shape"]]))
                else:  # a shape of the scene (or any) in an empty cell
                    used = {o["cell"] for o in scene}
                    cell = rng.choice([c for c in CELLS if c not in used])
                    shape = obj["shape"] if rng.random() < 0.6 else rng.choice(SHAPES)
                    spec.update(cell=cell, shape=shape)
        return spec

    if kind == "colour_of_shape":
        spec["shape"] = obj["shape"]
    elif kind == "shape_of_colour":
        spec["colour"] = obj["colour"]
    elif kind == "shape_at":
        spec["cell"] = obj["cell"]
    elif kind == "position_of":
        spec.update(colour=obj["colour"], shape=obj["shape"])
    if fmt == "mc":
        answer = _answer_word(scene, spec)
        if kind == "colour_of_shape":
            pool = list(COLOURS)
        elif kind == "shape_of_colour":
            pool = list(SHAPES)
        elif kind == "count":
            pool = list(COUNTS)
        else:
            pool = list(CELLS)
        n_opts = min(4, len(pool))
        others = rng.sample([p for p in pool if p != answer], n_opts - 1)
        choices = others + [answer]
        rng.shuffle(choices)
        spec["choices"] = choices
    return spec


def _chance(spec: dict[str, Any]) -> float:
    if spec["format"] == "mc":
        return 1.0 / len(spec["choices"])
    if spec["format"] == "yesno":
        return 0.5
    return 1.0 / _SHORT_ANSWER_SPACE[spec["kind"]]


def sample_id(split: str, index: int, seed: int = 0) -> str:
    return f"shapes-{split}-{seed}-{index:06d}"


def make_sample(
    split: str,
    index: int,
    seed: int = 0,
    fmt: str | None = None,
    hint: bool = False,
    n_objects: int | None = None,
) -> dict[str, Any]:
    """One sample; fully determined by its arguments. Format cycles mc/yesno/short unless given.

    ``hint`` adds a text description of the scene as ScienceQA "Context:" (used for text-only training);
    ``n_objects`` fixes the number of objects (default: 1-3 at random; used for a training curriculum).
    """
    if split not in _SPLIT_SALT:
        raise ValueError(f"unknown split {split!r}")
    rng = random.Random(f"shapes:{_SPLIT_SALT[split]}:{seed}:{index}")
    fmt = fmt or FORMATS[index % len(FORMATS)]
    want_yes = ((index // len(FORMATS)) % 2 == 0) if fmt == "yesno" else None
    while True:
        scene = _make_scene(rng, n_objects)
        scene_json = json.dumps(scene, sort_keys=True)
        if scene_bucket(scene_json) in _SPLIT_BUCKETS[split]:
            break
    spec = _make_spec(rng, scene, fmt, want_yes)
    hint_text = describe_scene(scene) if hint else ""
    return {
        "id": sample_id(split, index, seed),
        "image": render(scene, jitter_seed=f"{split}:{seed}:{index}"),
        "format": fmt,
        "kind": spec["kind"],
        "question": format_prompt(spec, hint_text),
        "answer": answer_from_scene(scene, spec),
        "choices": list(spec.get("choices", [])),
        "scene": scene_json,
        "spec": json.dumps(spec, sort_keys=True),
        "chance": _chance(spec),
    }


def describe_scene(scene: list[dict[str, Any]] | str) -> str:
    """A short text description of a scene, e.g. "red circle at the top-left. blue square at the center."."""
    if isinstance(scene, str):
        scene = json.loads(scene)
    return " ".join(f"{o['colour']} {o['shape']} at the {o['cell']}." for o in scene)


def generate(split: str, n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Generate ``n`` samples of ``split`` ("train", "validation" or "test").

    Default sizes are in ``SPLIT_SIZES`` (test: 600 = 200 per format). Formats cycle mc, yesno, short, and
    yes/no answers alternate, so any multiple of 6 samples is exactly balanced.
    """
    if n is None:
        n = SPLIT_SIZES[split]
    return [make_sample(split, i, seed) for i in range(n)]


# --------------------------------------------------------------------------------------------- datasets
def _features():
    from datasets import Features, Image, Sequence, Value

    return Features(
        {
            "id": Value("string"),
            "image": Image(),
            "format": Value("string"),
            "kind": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "choices": Sequence(Value("string")),
            "scene": Value("string"),
            "spec": Value("string"),
            "chance": Value("float32"),
        }
    )


def as_dataset(
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
):
    """A ``datasets.DatasetDict`` with "train", "validation" and "test" splits (disjoint seeds)."""
    from datasets import Dataset, DatasetDict

    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    feats = _features()
    out = {}
    for split, n in sizes.items():
        rows = generate(split, n, seed)
        cols = {k: [r[k] for r in rows] for k in feats}
        out[split] = Dataset.from_dict(cols, features=feats)
    return DatasetDict(out)


def export(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
) -> list[Path]:
    """Write one parquet file per split (images as PNG bytes) into ``out_dir``; return the paths."""
    import datasets

    datasets.disable_progress_bars()  # the library never prints: no "Creating parquet" bars on stderr
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dd = as_dataset(n_train=n_train, n_validation=n_validation, n_test=n_test, seed=seed)
    paths = []
    for split, ds in dd.items():
        p = out_dir / f"{split}.parquet"
        ds.to_parquet(str(p))
        paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------- scoring
_NUM_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "zero": "0", "five": "5"}
_ARTICLES = {"a", "an", "the"}


def _norm_words(text: str) -> list[str]:
    text = text.lower().replace("color", "colour").replace("centre", "center")
    words = re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text)
    return [_NUM_WORDS.get(w, w) for w in words if w not in _ARTICLES]


def _parse_letter(prediction: str) -> str | None:
    s = prediction.strip()
    bare = re.sub(r"[\s\(\)\[\]\.:,;!*'\"]", "", s)
    if len(bare) == 1 and bare.isalpha():
        return bare.upper()
    m = re.search(r"(?:answer|option|choice)\s*(?:is|:)?\s*[\(\[]?([A-Za-z])(?![A-Za-z])", s, re.I)
    if m:
        return m.group(1).upper()
    m = re.match(r"^[\(\[]?([A-Za-z])[\)\]\.:,](?:\s|$)", s)
    if m:
        return m.group(1).upper()
    m = re.search(r"(?<![A-Za-z])([A-E])(?![A-Za-z])", s)
    if m:
        return m.group(1)
    return None


def score(format: str, prediction: str, answer: str) -> bool:  # noqa: A002 - public API name
    """Lenient correctness check of a model output.

    mc: a letter in many spellings ("B", "b", "B.", "(B)", "The answer is B"); yes/no: the first yes/no word;
    short: the normalised first word, or the answer appearing as a word ("Red.", "It is red", "two" == "2").
    """
    prediction = prediction or ""
    if format == "mc":
        got = _parse_letter(prediction)
        return got is not None and got == answer.strip().upper()
    words = _norm_words(prediction)
    ans = _norm_words(answer)
    if not ans:
        return False
    if format == "yesno":
        first = next((w for w in words if w in ("yes", "no")), None)
        return first == ans[0]
    if format == "short":
        if not words:
            return False
        if words[: len(ans)] == ans:
            return True
        n = len(ans)
        return any(words[i : i + n] == ans for i in range(len(words) - n + 1))
    raise ValueError(f"unknown format {format!r}")
