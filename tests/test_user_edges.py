"""Rough edges a new user hit: each case fails clearly, in one line, or does what the docs say."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import paligemma
from paligemma.cli import main
from paligemma.cli.common import available_cores, set_threads


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.new("RGB", (32, 32), "red").save(path)
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_missing_gpu_is_one_error_line(device, image_file, capsys):
    code = main(
        ["generate", "--image", str(image_file), "--prompt", "caption en", "--device", device]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("paligemma: error: device ") and "no CUDA GPU" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="no CUDA GPU"):
        paligemma.load(device=device)


def test_an_unknown_device_name_is_a_value_error():
    with pytest.raises(ValueError, match="not a device name"):
        paligemma.load(device="banana")


@pytest.mark.parametrize("n_images", [1, 3])
def test_mismatched_images_and_prompts_name_both_counts(n_images, embedded_pipe):
    pipe = embedded_pipe
    image = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match=f"^got {n_images} image groups for 2 prompts"):
        pipe.generate([image] * n_images, ["caption en", "caption en"])


def test_threads_come_from_the_cores_this_process_may_use(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a quota of 1.5 cores
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path) >= 1
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(None) == available_cores()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert set_threads(None) == 1  # an explicit OMP_NUM_THREADS is respected
    finally:
        torch.set_num_threads(before)
    assert main(["--threads", "0", "info", "paligemma-3b-224"]) == 1


def test_adapter_flag_reaches_the_pipeline(tmp_path, image_file, capsys):
    """`generate --adapter DIR`: an adapter whose B matrices are zero answers as the base."""
    from paligemma.lora import apply_lora_, save_adapter

    pipe = paligemma.load()
    apply_lora_(pipe.model, rank=2)
    save_adapter(pipe.model, tmp_path / "adapter")
    args = ["generate", "--image", str(image_file), "--prompt", "caption en"]
    assert main(args) == 0
    base = capsys.readouterr().out
    assert main([*args, "--adapter", str(tmp_path / "adapter")]) == 0
    assert capsys.readouterr().out == base
    assert main([*args, "--adapter", str(tmp_path / "nothing")]) == 1
    assert "is not a LoRA adapter" in capsys.readouterr().err


def test_served_model_name_is_what_the_server_answers_to(image_file):
    """`paligemma serve --served-model-name NAME`: /v1/models lists NAME, requests naming it
    are answered, any other name is a 404 that says which model is served."""
    import httpx
    from server_util import chat_body, serve_process

    with serve_process("--served-model-name", "pg-test") as base:
        models = httpx.get(base + "/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["pg-test"]
        body = chat_body(Image.open(image_file), "caption en", max_tokens=4)
        ok = httpx.post(base + "/v1/chat/completions", json={**body, "model": "pg-test"})
        assert ok.status_code == 200 and ok.json()["model"] == "pg-test"
        wrong = httpx.post(base + "/v1/chat/completions", json={**body, "model": "paligemma"})
        assert wrong.status_code == 404 and "'pg-test'" in wrong.json()["error"]["message"]


def test_the_embedded_model_has_a_name(image_file, capsys, tmp_path, monkeypatch):
    """`--model embedded` (and load("embedded")) is the demo model in the package, unless a
    directory of that name is where the user stands."""
    assert paligemma.load("embedded").model.cfg == paligemma.load().model.cfg
    args = ["generate", "--image", str(image_file), "--prompt", "caption en"]
    assert main(args) == 0
    default = capsys.readouterr().out
    assert main([*args, "--model", "embedded"]) == 0
    assert capsys.readouterr().out == default
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embedded").mkdir()  # a local directory wins: it is not a checkpoint
    with pytest.raises((ValueError, OSError)):
        paligemma.load("embedded")


def test_finetune_defaults_to_the_embedded_model(image_file, tmp_path, capsys):
    """`paligemma finetune` without --model fine-tunes the embedded model, as every other
    command defaults to it; its adapter names the embedded checkpoint as its base."""
    import json

    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"image": str(image_file), "prefix": "caption en", "suffix": "a red square"})
    )
    out = tmp_path / "run"
    flags = ["--steps", "1", "--batch-size", "1", "--save-every", "1"]
    assert main(["finetune", "--data", str(data), "--out", str(out), *flags]) == 0, (
        capsys.readouterr()
    )
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"].endswith("assets")


def test_info_on_a_quantised_checkpoint_and_the_preset_list(tmp_path, capsys, embedded_pipe):
    """info counts the architecture's parameters whatever the weights' form (packed codes are
    not parameters), says the checkpoint is quantised, and --list describes every preset."""
    from paligemma.config import CONFIGS

    assert main(["info", "embedded"]) == 0
    float_info = capsys.readouterr().out
    count = float_info.splitlines()[0]
    for mode in ("int8", "int4"):
        out = tmp_path / mode
        assert main(["convert", "embedded", str(out), "--quantize", mode]) == 0
        capsys.readouterr()
        assert main(["info", str(out)]) == 0
        text = capsys.readouterr().out
        assert text.splitlines()[0] == count, text
        assert f"quantised {mode}" in text
        layers = 7 * embedded_pipe.model.cfg.text.depth + 1  # decoder linears, the head's copy
        lookups = ", embeddings read from the head's codes" if mode == "int8" else ""
        assert f"({layers} layers{', groups of 64' if mode == 'int4' else ''}{lookups})" in text
    assert "weights    float" in float_info
    assert main(["info", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in CONFIGS:
        assert name in listing
    assert "27,654,910,704" in listing  # paligemma2-28b-896, as `info` on the preset says


def test_generate_help_states_the_real_dtype_default(capsys):
    """--dtype's help says what load() does: float32 for the embedded model, bfloat16 else."""
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: float32 for the embedded model, bfloat16 for others" in text
    assert "--threads" not in text  # a global flag: `paligemma --threads N generate ...`
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--threads" in capsys.readouterr().out
