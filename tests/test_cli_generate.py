"""`paligemma generate` end to end, batch mode, and a one-line error for every bad input."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import paligemma
from paligemma.cli import main


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "shapes.png"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    return paligemma.load(pipeline_dir, device="cpu")  # the CLI default: bfloat16


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_end_to_end_in_a_real_process(pipeline_dir, image_file, pipe):
    cmd = [
        sys.executable,
        "-m",
        "paligemma.cli",
        "generate",
        "--model",
        str(pipeline_dir),
        "--image",
        str(image_file),
        "--prompt",
        "caption en",
        "--max-new-tokens",
        "6",
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    want = pipe.generate(paligemma.load_image(image_file), "caption en", max_new_tokens=6)
    assert record["token_ids"] == want.token_ids and record["text"] == want.text
    assert record["finish_reason"] in ("stop", "length")
    assert set(record["timings"]) >= {"load_s", "prefill_s", "decode_s", "decode_tokens_per_s"}


def test_plain_stream_sampling_and_beams(capsys, pipeline_dir, image_file, pipe):
    want = pipe.generate(paligemma.load_image(image_file), "caption en", max_new_tokens=6).text
    base = ["generate", "--model", pipeline_dir, "--image", image_file, "--max-new-tokens", 6]
    code, out, _ = run_cli(capsys, *base, "--prompt", "caption en")
    assert code == 0 and out == want + "\n"
    code, out, _ = run_cli(capsys, *base, "--prompt", "caption en", "--stream")
    assert code == 0 and out == want + "\n"
    sample = ["--sample", "--temperature", 0.8, "--top-p", 0.9, "--seed", 3, "--json"]
    first = run_cli(capsys, *base, "--prompt", "caption en", *sample)[1]
    second = run_cli(capsys, *base, "--prompt", "caption en", *sample)[1]
    assert json.loads(first)["token_ids"] == json.loads(second)["token_ids"]
    code, out, _ = run_cli(
        capsys, *base, "--image", image_file, "--prompt", "compare", "--beams", 2, "--json"
    )
    assert code == 0 and json.loads(out)["num_tokens"] >= 1


def test_batch_mode(capsys, pipeline_dir, image_file, tmp_path, pipe):
    shutil.copy(image_file, tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("not an image")
    lines = [
        {"image": "a.png", "prompt": "caption en"},
        {"image": "bad.png", "prompt": "caption en"},
        "this is not json",
        {"image": ["a.png", "a.png"], "prompt": "compare"},
        {"image": "a.png"},
        {"image": "a.png", "prompt": "answer en what is it?"},
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(
        capsys,
        "generate",
        "--model",
        pipeline_dir,
        "--batch",
        jobs,
        "--out",
        out,
        "--batch-size",
        2,
        "--max-new-tokens",
        5,
    )
    assert code == 3  # finished, but some lines failed (documented exit code)
    assert "generate: 100%" in err and "3 of 6 lines failed" in err  # progress bar + summary
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [("error" in r) for r in records] == [False, True, True, False, True, False]
    assert "cannot read image" in records[1]["error"] and "line 3" in records[2]["error"]
    image = paligemma.load_image(image_file)
    assert records[0]["token_ids"] == pipe.generate(image, "caption en", max_new_tokens=5).token_ids
    assert (
        records[5]["text"] == pipe.generate(image, "answer en what is it?", max_new_tokens=5).text
    )
    # Timings are the batch's and say so; each row keeps its own token count.
    for r in (records[0], records[3], records[5]):
        assert "timings" not in r and r["num_tokens"] == len(r["token_ids"])
        assert set(r["batch"]) == {"rows", "prefill_s", "decode_s", "steps", "steps_per_s"}
        assert r["batch"]["rows"] == 1  # each of their batches of 2 lost a bad line
        assert r["batch"]["steps"] >= r["num_tokens"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in 60 bytes: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_every_bad_input_is_one_clear_line(capsys, pipeline_dir, image_file, tmp_path):
    (tmp_path / "text.png").write_text("hello, I am not an image")
    data = image_file.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "bomb.png").write_bytes(png_header_only(12_000, 12_000))  # 144 Mpx: ours refuses
    (tmp_path / "giant.png").write_bytes(png_header_only(60_000, 60_000))  # PIL's own limit too
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(pipeline_dir, no_tok)
    (no_tok / "tokenizer.model").unlink()

    base = ["generate", "--model", pipeline_dir, "--prompt", "caption en", "--image"]
    good = ["generate", "--model", pipeline_dir, "--image", image_file]
    cases = [
        ([*base, tmp_path / "missing.png"], "no such file"),
        ([*base, tmp_path / "text.png"], "cannot identify image file"),
        ([*base, tmp_path / "truncated.png"], "truncated"),
        ([*base, tmp_path / "bomb.png"], "above the limit of 100,000,000"),
        ([*base, tmp_path / "giant.png"], "decompression-bomb guard"),
        ([*good, "--prompt", "word " * 9000], "longest sequence the model takes"),
        ([*good, "--prompt", "x", "--seed", 1], "need --sample"),
        ([*good, "--prompt", "x", "--max-new-tokens", 0], "max_new_tokens must be"),
        (good, "needs --image and --prompt"),
        (
            ["generate", "--model", tmp_path / "nowhere", "--image", image_file, "--prompt", "x"],
            "no such checkpoint",
        ),
        (
            ["generate", "--model", no_tok, "--image", image_file, "--prompt", "x"],
            "has no tokenizer",
        ),
        (
            ["generate", "--model", pipeline_dir, "--batch", tmp_path / "none.jsonl"],
            "no such batch file",
        ),
    ]
    for args, message in cases:
        code, out, err = run_cli(capsys, *args)
        assert code == 1, (args, out, err)
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("paligemma: error: "), err
        assert message in lines[0], (message, lines[0])
