"""Reading images and videos: evenly spaced frames, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vtwctl.errors import VTWError
from vtwctl.media import read_image, read_video


def test_video_file_frames_are_evenly_spaced(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(20):  # frame i is uniformly grey level 12 * i
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 12 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames = read_video(path, 8)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    expected = np.linspace(0, 19, 8).round() * 12
    assert np.abs(frames[:, 16, 16].mean(-1) - expected).max() < 6  # lossy codec


def test_frames_folder_and_npy(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(folder / f"{i:03d}.png")
    frames = read_video(folder, 4)
    assert frames[:, 0, 0, 0].tolist() == [0, 60, 120, 180]  # frames 0, 3, 6, 9
    arr = tmp_path / "v.npy"
    np.save(arr, np.arange(5)[:, None, None, None].repeat(3, -1).repeat(2, 1).repeat(2, 2).astype("uint8"))
    assert read_video(arr, 3)[:, 0, 0, 0].tolist() == [0, 2, 4]


def test_errors(tmp_path):
    with pytest.raises(VTWError, match="video not found"):
        read_video(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 4)))
    with pytest.raises(VTWError, match="expected an array"):
        read_video(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VTWError, match="no frame images"):
        read_video(tmp_path / "empty")
    with pytest.raises(VTWError, match="image not found"):
        read_image(tmp_path / "x.png")


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    # a 16-bit grey gradient 0..65535 across 256 columns: 8-bit value of column c should be about c
    ramp = np.tile((np.arange(256) * 257).astype(np.uint16), (4, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow opens it as a 16/32-bit integer image
    rgb = np.asarray(read_image(path))
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[0, :, 0].astype(int) - np.arange(256)).max() <= 1  # convert("RGB") alone gives 255s
    assert (rgb[..., 0] == rgb[..., 2]).all()
    # a 32-bit float image in 0..1 (TIFF style)
    f = tmp_path / "ramp.tiff"
    Image.fromarray(np.tile(np.linspace(0, 1, 256, dtype=np.float32), (4, 1))).save(f)
    assert np.abs(np.asarray(read_image(f))[0, :, 1].astype(int) - np.arange(256)).max() <= 1
