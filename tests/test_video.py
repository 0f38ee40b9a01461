"""Short videos: frames sampled uniformly (PyAV), and generation on them through the Python API,
`paligemma generate --video` and the server's `video_url` part.

The clips are written here with PyAV's own encoder (H.264 in MP4, what users have); frame k is
a flat colour of its own, so a sampled frame's colour says which frame it was, through codec loss.
"""

from __future__ import annotations

import base64
import json
import sys

import av
import httpx
import numpy as np
import pytest
from server_util import running

from paligemma.cli import main
from paligemma.pipeline import PromptTooLongError
from paligemma.serve import Settings
from paligemma.tasks.video import VideoError, frame_indices, read_frames

SIZE = (48, 64)  # H, W


def colour(k: int) -> tuple[int, int, int]:
    return (k * 10) % 256, (255 - k * 10) % 256, (k * 37) % 256


def write_clip(path, frames: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width = SIZE
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            pixels = np.zeros((*SIZE, 3), dtype=np.uint8)
            pixels[:] = colour(k)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def which_frame(image, frames: int) -> int:
    """The frame number whose flat colour is nearest to the image's mean colour."""
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(mean - colour(k)).max() for k in range(frames)]))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_clip(root / "clip.mp4", 24)
    write_clip(root / "short.mp4", 5)
    (root / "notes.mp4").write_text("not a video")
    return root


def test_frames_sampled_are_the_expected_ones(clips):
    # Segment centres: frame floor((i + 1/2) * total / N).
    assert frame_indices(24, 4) == [3, 9, 15, 21]
    assert frame_indices(5, 8) == [0, 0, 1, 2, 2, 3, 4, 4]  # short clips repeat frames
    for name, total, n in [("clip.mp4", 24, 4), ("clip.mp4", 24, 16), ("short.mp4", 5, 8)]:
        images = read_frames(clips / name, n)
        assert [im.size for im in images] == [SIZE[::-1]] * n
        assert [which_frame(im, total) for im in images] == frame_indices(total, n)
        mean = np.asarray(images[0], dtype=np.float64).reshape(-1, 3).mean(0)
        assert np.abs(mean - colour(frame_indices(total, n)[0])).max() < 8  # codec loss only
    from_bytes = read_frames((clips / "clip.mp4").read_bytes(), 4)
    assert [which_frame(im, 24) for im in from_bytes] == [3, 9, 15, 21]
    with pytest.raises(VideoError, match="no such file"):
        read_frames(clips / "missing.mp4")
    with pytest.raises(VideoError, match="cannot read video"):
        read_frames(clips / "notes.mp4")
    with pytest.raises(VideoError, match="over 100 px"):
        read_frames(clips / "clip.mp4", 2, max_pixels=100)


def test_pipeline_generates_on_the_sampled_frames(clips, embedded_pipe):
    frames = read_frames(clips / "clip.mp4", 3)
    expected = embedded_pipe.generate(frames, "caption en", max_new_tokens=6)
    result = embedded_pipe.generate(
        video=clips / "clip.mp4", prompts="caption en", frames=3, max_new_tokens=6
    )
    assert result.text == expected.text and result.token_ids
    streamed = embedded_pipe.stream(
        video=clips / "clip.mp4", prompt="caption en", frames=3, max_new_tokens=6
    )
    assert "".join(streamed) == expected.text
    with pytest.raises(PromptTooLongError, match=r"200 frames x 64 image tokens.*127 frames fit"):
        embedded_pipe.generate(video=clips / "clip.mp4", prompts="caption en", frames=200)
    with pytest.raises(ValueError, match="not both"):
        embedded_pipe.generate(frames, "caption en", video=clips / "clip.mp4")


def test_cli_generate_video(clips, capsys, embedded_pipe):
    video = ["--video", str(clips / "clip.mp4"), "--frames", "2"]
    code = main(["generate", *video, "--prompt", "caption en", "--max-new-tokens", "4", "--json"])
    out, _ = capsys.readouterr()
    assert code in (0, None)
    assert json.loads(out)["num_tokens"] > 0
    for args, message in [
        (["--video", str(clips / "notes.mp4")], "cannot read video"),
        (["--image", str(clips / "x.png"), "--frames", "4"], "--frames N (N >= 1) goes with"),
    ]:
        code = main(["generate", *args, "--prompt", "caption en"])
        _, err = capsys.readouterr()
        assert code != 0 and message in err and "Traceback" not in err


def test_server_video_url_part(clips, embedded_pipe):
    clip = (clips / "clip.mp4").read_bytes()
    url = "data:video/mp4;base64," + base64.b64encode(clip).decode()

    def body(video_url: dict) -> dict:
        parts = [
            {"type": "text", "text": "caption en"},
            {"type": "video_url", "video_url": video_url},
        ]
        return {"messages": [{"role": "user", "content": parts}], "max_tokens": 6}

    expected = embedded_pipe.generate(
        read_frames(clips / "clip.mp4", 2), "caption en", max_new_tokens=6
    )
    settings = Settings(model_name="embedded", allow_dir=str(clips), max_video_frames=8)
    with running(embedded_pipe, settings) as base:
        post = lambda b: httpx.post(base + "/v1/chat/completions", json=b, timeout=60)  # noqa: E731
        reply = post(body({"url": url, "frames": 2}))
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == expected.text
        assert reply.json()["usage"]["prompt_tokens"] == 2 * 64 + 1 + len(
            embedded_pipe.tokenizer.encode("caption en\n")
        )
        by_file = post(body({"url": "file://clip.mp4", "frames": 2}))
        assert by_file.json()["choices"][0]["message"]["content"] == expected.text
        for video_url, status, message in [
            ({"url": url, "frames": 9}, 400, "the limit is 8"),
            ({"url": "file://../../etc/hostname"}, 403, "outside the allowed directory"),
            ({"url": "file://notes.mp4"}, 400, "cannot read video"),
        ]:
            reply = post(body(video_url))
            assert reply.status_code == status and message in reply.text, reply.text


def test_without_pyav_the_message_names_the_extra(monkeypatch, clips):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"pip install 'paligemma\[video\]'"):
        read_frames(clips / "clip.mp4", 2)


def test_eval_reads_a_file_that_names_videos(clips, tmp_path, embedded_pipe):
    """`paligemma eval` on a QA file whose records name videos: each video becomes its sampled
    frames, and the answers are those `pipe.generate(video=...)` gives."""
    data = tmp_path / "clips.jsonl"
    rows = [
        {"image": str(clips / "clip.mp4"), "prefix": "caption en", "suffix": "x"},
        {"image": str(clips / "short.mp4"), "prefix": "answer en what is it?", "suffix": "y"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    args = ["--data", str(data), "--out", str(out), "--frames", "3", "--max-new-tokens", "16"]
    main(["eval", "--task", "exact", *args])
    lines = (out / "predictions.jsonl").read_text().splitlines()
    for row, prediction in zip(rows, map(json.loads, lines), strict=True):
        video = {"video": row["image"], "frames": 3}
        alone = embedded_pipe.generate(None, row["prefix"], **video, max_new_tokens=16)
        assert prediction["text"] == alone.text
    assert json.loads((out / "settings.json").read_text())["frames"] == 3
