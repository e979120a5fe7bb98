"""Reading images and videos from disk, with one clear error per failure."""

from __future__ import annotations

from pathlib import Path

from .errors import VTWError

_FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def read_image(path: str | Path):
    """An RGB PIL image from ``path``."""
    from PIL import Image, UnidentifiedImageError

    from .files import check_regular

    p = Path(path).expanduser()
    if not p.exists():
        raise VTWError(f"image not found: {path}")
    if p.is_dir():
        raise VTWError(f"{path} is a directory, not an image file")
    check_regular(p, "image")
    try:
        with Image.open(p) as img:
            return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise VTWError(f"cannot read image {path}: {str(exc).strip().rstrip('.')} (Pillow refuses images this "
                       "large as possible decompression bombs; scale it down)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        detail = str(exc).strip().splitlines()
        raise VTWError(f"cannot read image {path}: {exc.__class__.__name__}"
                       + (f" ({detail[0][:200]})" if detail and not isinstance(exc, UnidentifiedImageError)
                          else "")) from None


def to_rgb(img):
    """An 8-bit RGB copy of a PIL image. 16-bit and 32-bit integer images (``I;16``, ``I``: 16-bit PNG
    and TIFF) and float images (``F``) are scaled into 0..255 first; ``convert("RGB")`` alone clips
    them, which turns a 16-bit photograph all white."""
    import numpy as np
    from PIL import Image

    if img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64) / 257.0  # 65535 -> 255
    elif img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        if img.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif hi > 65535 or lo < 0:  # no known bit depth: stretch the range
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        elif hi > 255:
            a = a / 257.0  # 16-bit samples in a 32-bit container
    else:
        return img.convert("RGB")
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")


def read_video(path: str | Path, num_frames: int = 8):
    """``num_frames`` evenly spaced RGB frames as a uint8 array [T, H, W, 3].

    ``path`` is a folder of frame images, a ``.npy`` array [T, H, W, 3], or a video file (needs
    PyAV: ``pip install av``).
    """
    import numpy as np

    from .files import check_regular

    p = Path(path).expanduser()
    if not p.exists():
        raise VTWError(f"video not found: {path}")
    if not p.is_dir():
        check_regular(p, "video")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in _FRAME_SUFFIXES)
        if not files:
            raise VTWError(f"no frame images (png/jpg) in {path}")
        frames = np.stack([np.asarray(read_image(f)) for f in files])
    elif p.suffix == ".npy":
        try:
            frames = np.load(p)
        except (OSError, ValueError) as exc:
            raise VTWError(f"cannot read video array {path}: {exc}") from None
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise VTWError(f"{path}: expected an array of shape [T, H, W, 3], got {list(frames.shape)}")
    else:
        try:
            import av
        except ImportError:
            raise VTWError(f"reading {p.suffix} video files needs PyAV (pip install av); "
                           "or pass a folder of frames or a .npy array") from None
        try:
            frames = _decode_sampled(av, p, num_frames)
        except VTWError:
            raise
        except Exception as exc:  # PyAV raises many error types
            raise VTWError(f"cannot read video {path}: {exc.__class__.__name__}") from None
        return frames
    return frames[_frame_index(len(frames), num_frames, path)].astype("uint8")


def _frame_index(total: int, num_frames: int, path) -> list[int]:
    """Indices of ``num_frames`` evenly spaced frames out of ``total`` (all of them if fewer)."""
    import numpy as np

    if total <= 0:
        raise VTWError(f"video {path} has no frames")
    return np.linspace(0, total - 1, num=min(num_frames, total)).round().astype(int).tolist()


def _decode_sampled(av, path: Path, num_frames: int):
    """Decode only the ``num_frames`` evenly spaced frames (the rest are skipped, not kept in memory)."""
    import numpy as np

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames or sum(1 for _ in container.decode(video=0))
    wanted = set(_frame_index(total, num_frames, path))
    out = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == len(wanted):
                break
    return np.stack(out).astype("uint8")
