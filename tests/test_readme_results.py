"""The numbers the README and the speed record (benchmarks/RESULTS.md) quote are the result
files' (benchmarks/results/) and the demo's: each table cell equals its JSON value rounded as
the cell shows it."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
RECORD = (ROOT / "benchmarks" / "RESULTS.md").read_text()
DOCS = README + "\n\n" + RECORD  # a figure may be quoted in either (the summary, the history)
RESULTS = ROOT / "benchmarks" / "results"


def result(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def name_of(label: str) -> str:
    """A row's run name: "**ours int8** (our kernel)" -> "ours int8"."""
    return re.sub(r"\s*\(.*\)$", "", label.replace("**", "")).strip()


def table(header_start: str) -> list[tuple[str, list[str]]]:
    """The rows of the README's (or the record's) table whose header row starts with
    `header_start`: (first cell, the other cells)."""
    lines = DOCS.split("\n" + header_start, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((cells[0], cells[1:]))
    return rows


def runs_table(header_start: str, runs: dict[str, dict]) -> dict[str, list[str]]:
    """run name -> its row's cells, after checking that the table has a row for every run."""
    rows = {name_of(label): cells for label, cells in table(header_start)}
    assert set(rows) == {name_of(k) for k in runs}, (set(rows), set(runs))
    return {k: rows[name_of(k)] for k in runs}


def agrees(cell: str, value: float) -> bool:
    """Does `cell` ("**4.82 s**", "0.75*", "37†", "6.3 GB") show `value`, rounded as shown?"""
    number = re.search(r"-?\d+(?:\.(\d+))?", cell.replace(",", ""))
    assert number, cell
    decimals = len(number.group(1) or "")
    return abs(float(number.group(0)) - value) <= 0.5 * 10**-decimals + 1e-9


def check_row(cells: list[str], expected: list[float | None], name: str) -> None:
    assert len(cells) == len(expected), name
    for i, (cell, value) in enumerate(zip(cells, expected, strict=True)):
        if value is not None:
            assert agrees(cell, value), (name, i, cell, value)


def reference_best(res: dict) -> tuple[float, float, float]:
    """transformers' best per figure in a run's results: (first token s, decode tok/s, RSS GB)."""
    ref = [v for k, v in res.items() if k.startswith("transformers")]
    first = min(v["first_token_s"] for v in ref)
    return first, max(v["decode_tok_s_b1"] for v in ref), min(v["peak_rss_gb"] for v in ref)


def test_speed_table_is_the_benchmark_json():
    main, int4 = result("cpu2-paligemma-3b-224.json"), result("cpu2-paligemma-3b-224-int4.json")
    runs = {**main["results"], "ours int4": int4["results"]["ours int4"]}
    ref_first = main["results"]["transformers float32"]["first_token_s"]
    ref = main["results"]["transformers bfloat16"]
    rows = runs_table("| PaliGemma-3B-224 | first token | × ref | decode tok/s |", runs)
    for name, r in runs.items():
        decode, b8 = r["decode_tok_s_b1"], r["decode_tok_s_b8"]
        expected = [
            r["first_token_s"],
            ref_first / r["first_token_s"],
            decode,
            decode / ref["decode_tok_s_b1"],
            100 * decode / r["bandwidth_limit_tok_s"],
            b8,
            b8 / decode,
            r["peak_rss_gb"],
            r["peak_rss_gb"] / ref["peak_rss_gb"],
        ]
        check_row(rows[name], expected, name)
    first = result("cpu2-paligemma-3b-224-first-run.json")["results"]
    ours_first = first["ours bfloat16 (default)"]
    theirs_first = first["transformers bfloat16"]["decode_tok_s_b1"]
    for quoted, value in (
        ("Bandwidth measured {:.1f} GB/s", main["bandwidth_gbs"]),
        ("against the {:.1f} GB/s measured in that run", int4["bandwidth_gbs"]),
        ("({:.2f} tok/s, as before)", int4["results"]["ours float32"]["decode_tok_s_b1"]),
        ("transformers bfloat16 decode {:.2f} tok/s", theirs_first),
        ("ours bfloat16 {:.2f}", ours_first["decode_tok_s_b1"]),
        ("({:.2f}×)", ours_first["decode_tok_s_b1"] / theirs_first),
        ("ours batch 8 {:.1f} tok/s", ours_first["decode_tok_s_b8"]),
        ("({:.1f}× batch 1)", ours_first["decode_tok_s_b8"] / ours_first["decode_tok_s_b1"]),
    ):  # fmt: skip
        assert quoted.format(value) in " ".join(DOCS.split()), quoted.format(value)


def test_avx2_one_run_table_is_its_json():
    """The AVX2 host's full run: transformers bfloat16 at batch 1 only, memory after batch 1."""
    run = result("avx2-paligemma-3b-224-s27.json")
    runs = run["results"]
    theirs = [r for name, r in runs.items() if name.startswith("transformers")]
    ref_first = min(r["first_token_s"] for r in theirs)
    ref_decode = max(r["decode_tok_s_b1"] for r in theirs)
    ref_rss = min(r["peak_rss_b1_gb"] for r in theirs)
    rows = runs_table("| PaliGemma-3B-224, AVX2, one run |", runs)
    for name, r in runs.items():
        decode, b8 = r["decode_tok_s_b1"], r.get("decode_tok_s_b8")
        expected = [
            r["first_token_s"],
            r["first_token_s"] / ref_first,
            decode,
            decode / ref_decode,
            100 * decode / r["bandwidth_limit_tok_s"],
            b8,
            b8 / decode if b8 else None,
            r["peak_rss_b1_gb"],
            r["peak_rss_b1_gb"] / ref_rss,
        ]
        check_row(rows[name], expected, name)
        if b8 is None:
            assert rows[name][5] == rows[name][6] == "—", name
    ours = runs["ours bfloat16 (default)"]["first_token_s"]
    text = " ".join(DOCS.split())
    for quant in ("int8", "int4"):
        assert f"{runs['ours ' + quant]['first_token_s'] / ours:.2f}×" in text, quant
    assert f"bandwidth up to {run['bandwidth_gbs']:.1f} GB/s" in text


def test_avx2_448_first_token_is_its_json():
    rounds = [
        r
        for run in ("run1", "run2")
        for r in result(f"avx2-first-token-448-s25-{run}.json")["rounds"]
    ]
    ours = [r["ours-bf16"]["first_token_s"] for r in rounds]
    theirs = [r["hf-f32"]["first_token_s"] for r in rounds]
    text = " ".join(DOCS.split())
    assert f"ours bfloat16 {min(ours):.2f}–{max(ours):.2f} s" in text
    assert f"transformers float32 {min(theirs):.2f}–{max(theirs):.2f} s" in text
    each = ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))
    assert f"per round {each} of its first token" in text
    assert f"(best against best {min(ours) / min(theirs):.2f}×" in text


def test_avx2_896_first_token_is_its_json():
    run = result("avx2-first-token-896-s26.json")
    ours, theirs = run["ours-bf16"], run["hf-f32"]
    text = " ".join(DOCS.split())
    for quoted, value in (
        ("ours bfloat16 {:.1f} s", ours["first_token_s"]),
        ("transformers float32 {:.1f} s", theirs["first_token_s"]),
        ("({:.2f}× its first token", ours["first_token_s"] / theirs["first_token_s"]),
        ("decode {:.2f}", ours["decode_tok_s_b1"]),
        ("against {:.2f} tok/s", theirs["decode_tok_s_b1"]),
        ("peak memory {:.1f}", ours["peak_rss_b1_gb"]),
        ("against {:.1f} GB", theirs["peak_rss_b1_gb"]),
    ):  # fmt: skip
        assert quoted.format(value) in text, quoted.format(value)


def test_int8_kernel_table_is_its_json():
    run = result("cpu2-paligemma-3b-224-int8-kernel.json")
    runs, ref = run["results"], run["results"]["transformers bfloat16"]
    rows = runs_table(
        "| PaliGemma-3B-224 | first token | decode tok/s | × ref | % of bw limit |", runs
    )
    for name, r in runs.items():
        decode = r["decode_tok_s_b1"]
        expected = [
            r["first_token_s"],
            decode,
            decode / ref["decode_tok_s_b1"],
            100 * decode / r["bandwidth_limit_tok_s"],
            r["decode_tok_s_b8"],
            r["peak_rss_gb"],
            r.get("kl_vs_float32"),
            r.get("greedy_agreement"),
        ]
        check_row(rows[name], expected, name)
    assert f"bandwidth {run['bandwidth_gbs']:.1f} GB/s" in " ".join(DOCS.split())


def test_load_test_table_is_its_json():
    run = result("load_test.json")
    rows = table("| 200 requests | time | requests/s |")
    concurrent = f"{run['clients']} concurrent clients, `--max-batch {run['max_batch']}`"
    assert [label for label, _ in rows] == ["one by one", concurrent]
    assert f"{run['requests']} requests" in rows[0][0] or run["requests"] == 200
    (_, one), (_, both) = rows
    check_row(one[:3], [run["one_by_one_s"], run["one_by_one_rps"], 1.0], "one by one")
    check_row(both[:3], [run["concurrent_s"], run["concurrent_rps"], run["speedup"]], "both")
    assert both[3] == f"{run['identical']}/{run['requests']}"
    assert run["statuses"] == {"200": 2 * run["requests"]} and not run["server_errors"]
    assert one[4] == f"all {run['requests']}" and both[4].startswith(f"all {run['requests']}")


def test_adapters_table_is_its_json():
    """Many adapters: per-row LoRA in one batch vs one batch per adapter (best / median)."""
    runs = result("adapters.json")["results"]
    rows = table("| adapters | one mixed batch")
    assert [int(label) for label, _ in rows] == [r["adapters"] for r in runs]
    for (_, cells), run in zip(rows, runs, strict=True):
        assert run["mixed_equals_grouped"]
        parts = [cell.split(" / ") for cell in cells]
        for (best, median), how in zip(parts[:3], ("mixed", "grouped", "base"), strict=True):
            check_row([best, median], [run["best_s"][how], run["median_s"][how]], how)
        want = [run["grouped_over_mixed_best"], run["grouped_over_mixed"]]
        check_row(parts[3], want, "grouped / mixed")


def test_demo_prints_what_the_quick_start_shows(embedded_pipe, tmp_path, monkeypatch, capsys):
    """`paligemma demo --out demo.png` (its run(), on the embedded model) prints the Quick
    start's output block, line for line."""
    from paligemma.demo.run import run

    block = DOCS.split("What the main job prints:\n\n```text\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    run(embedded_pipe, "demo.png")
    assert capsys.readouterr().out.splitlines() == block.splitlines()


@pytest.mark.parametrize("mode", ["bfloat16", "int8", "int4"])
def test_quantised_score_columns_are_the_evaluation_json(mode):
    """The README's bfloat16 / int8 / int4 decoder columns are benchmarks/eval_embedded.py's
    results (the float32 column: tests/test_embedded.py), and every int8 / int4 score is within
    1 point (0.01) of bfloat16's, the reference the quantised modes are held to."""
    run = result("embedded_eval.json")
    scores = run[mode]
    head = "| task (200 scenes each) | metric | target | **shipped (step 12,000)** |"
    column = {"bfloat16": 3, "int8": 4, "int4": 5}[mode]  # after metric, target, shipped
    for (_, row), key in zip(table(head), SCORE_KEYS, strict=True):
        value = scores[key]
        shown = f"{value:.3f}" if key in PLAIN else f"{100 * value:.1f}%"
        assert row[column] == shown, (mode, key, row, value)
        assert abs(value - run["bfloat16"][key]) <= 0.01 + 1e-9, (mode, key, value)


SCORE_KEYS = [  # the score table's rows, in order
    "vqa_accuracy",
    "caption_exact_match",
    "detection_recall@0.5",
    "detection_fp_per_image",
    "segmentation_miou",
]
PLAIN = ("detection_fp_per_image", "segmentation_miou")  # the others are percentages


def test_evaluate_section_quotes_the_harness_runs():
    """The "Evaluate" section's numbers are benchmarks/results/embedded_eval_harness.json's,
    the scores of its commands run as written on the embedded model's 200 scenes per task."""
    run = result("embedded_eval_harness.json")
    det, seg, ref = run["coco-det"], run["coco-seg"], run["refcoco-seg"]
    text = " ".join(DOCS.split("\n## Evaluate\n", 1)[1].split("\n### ", 1)[0].split())
    for quoted, value in (
        ("mAP {:.3f}, mAP50", det["mAP"]),
        ("mAP50 {:.3f};", det["mAP50"]),
        ("mask mAP {:.3f}", seg["mAP"]),
        ("matched mIoU {:.3f}", seg["matched_mIoU"]),
        ("(the {} scenes whose", ref["counts"]["examples"]),
        ("mIoU {:.3f}, cIoU", ref["mIoU"]),
        ("cIoU {:.3f}", ref["cIoU"]),
        ("box accuracy {:.1f}%", 100 * ref["accuracy"]),
        ("VQAv2 accuracy {:.1f}%", run["vqav2"]["accuracy"]),
        ("caption CIDEr {:.3f}", run["cococap"]["CIDEr"]),
        ("(×100: {:.1f};", run["cococap"]["CIDEr_x100"]),
        ("caption exact match {:.1f}%", 100 * run["exact-caption"]["exact_match"]),
    ):  # fmt: skip
        assert quoted.format(value) in text, quoted.format(value)


def test_prefill_table_is_its_json():
    runs = result("cpu2-prefill-fused-default.json") | result("cpu2-prefill-896.json")
    rows = runs_table("| Prefill, bfloat16 | before |", runs)
    for name, r in runs.items():
        keys = ("before_s", "in-place_s", "after_s", "hf-eager_s", "hf-sdpa_s", "after/before")
        keys += ("after/hf-eager", "after/hf-sdpa")
        check_row(rows[name], [r.get(k) for k in keys], name)


def test_gpu_table_is_the_h100_runs_json():
    """The GPU path's table: each H100 run's cells are its gpu_check JSON, rounded as shown."""
    rows = table("| H100 run | first token, batch 1 |")
    runs = {n: result(f"gpu-h100-run{n}.json") for n in (1, 2)}
    assert {r["device_name"] for r in runs.values()} == {"NVIDIA H100 80GB HBM3"}
    keys = ("first_token_s_b1", "decode_tok_s_b1", "first_token_s_b32", "decode_tok_s_b32")
    assert len(rows) == 5
    for label, cells in rows:
        run, name = label.split(": ", 1)
        big = runs[int(run.removeprefix("run "))]["big"]
        name = {"ours": "ours bfloat16", "transformers sdpa": "transformers bfloat16 sdpa"}.get(
            name, "transformers bfloat16 static cache (compiled)"
        )
        check_row(cells, [big[name][k] for k in keys], label)
    # the correctness half, as the bullets above the table say: tiny tokens (run 1) and the
    # embedded scores (run 2; run 1 hit the pycocotools KeyError) equal the CPU's
    assert all(r["tokens_equal"] for r in runs[1]["tiny_greedy"])
    assert runs[2]["embedded_eval"]["equal"] and runs[2]["all_equal"]
    assert "KeyError: 'info'" in runs[1]["embedded_eval"]["failed"]


def test_gpu_table_is_the_h200_run_json():
    """The CUDA-graph table: each row's cells are the H200 run's gpu_check JSON, and the
    bullets' correctness claims hold in it (tokens equal with and without the graphs)."""
    run = result("gpu-h200-run3.json")
    assert run["device_name"] == "NVIDIA H200" and run["all_equal"]
    big = run["big"]
    names = {
        "run 3: ours (CUDA graphs, the default)": "ours bfloat16",
        "run 3: ours, eager steps": "ours bfloat16 eager steps",
        "run 3: transformers sdpa": "transformers bfloat16 sdpa",
    }
    names["run 3: transformers static cache (compiled)"] = (
        "transformers bfloat16 static cache (compiled)"
    )
    keys = ("first_token_s_b1", "decode_tok_s_b1", "first_token_s_b32", "decode_tok_s_b32")
    rows = table("| H200 run | first token, batch 1 |")
    assert [label for label, _ in rows] == list(names)
    for label, cells in rows:
        check_row(cells, [big[names[label]][k] for k in keys], label)
    agreement = big["ours cuda graphs vs eager steps, greedy tokens"]
    assert agreement["rows_equal"] == agreement["rows"] == 32
    tiny = run["tiny_greedy"]
    assert {r["cuda_graphs"] for r in tiny} == {True, False}
    assert all(r["tokens_equal"] for r in tiny)
    ratio = (
        big["ours bfloat16"]["decode_tok_s_b1"]
        / big["ours bfloat16 eager steps"]["decode_tok_s_b1"]
    )
    assert f"{ratio:.1f}× faster than our eager steps at batch 1" in " ".join(DOCS.split())


def test_higher_resolution_table_is_its_json():
    """The 448 / 896 px table: each row's cells are its run in its host's JSON, the ratios
    against transformers' best per figure (fastest first token and decode, least memory)."""
    files = {(448, 16): "cpu16-paligemma-3b-448", (896, 16): "cpu16-paligemma-3b-896"}
    files[448, 2] = "cpu2-paligemma-3b-448"
    runs = {k: result(f"{f}.json") for k, f in files.items()}
    rows = table("| Higher resolutions, bfloat16 |")
    assert len(rows) == sum(len(r["results"]) for r in runs.values())
    for label, cells in rows:
        where, name = label.split(" cores: ")
        size, cores = (int(n) for n in where.split(" px, "))
        res = runs[size, cores]["results"]
        assert runs[size, cores]["threads"] == cores
        first, decode, rss = reference_best(res)
        (r,) = [v for k, v in res.items() if name_of(k) == name_of(name)]
        expected = [r["first_token_s"], r["first_token_s"] / first, r["decode_tok_s_b1"]]
        expected += [r["decode_tok_s_b1"] / decode, r["peak_rss_gb"], r["peak_rss_gb"] / rss]
        check_row(cells, expected, label)


@pytest.mark.parametrize(
    "header, file, with_bw",
    [
        ("| PaliGemma-3B-224, final run |", "cpu2-paligemma-3b-224-final.json", True),
        ("| PaliGemma-3B-224, session 19 |", "cpu2-paligemma-3b-224-s19.json", False),
        ("| PaliGemma-3B-224, session 20 |", "cpu2-paligemma-3b-224-s20-final.json", True),
        ("| PaliGemma-3B-224, session 21 |", "cpu2-paligemma-3b-224-s21.json", True),
        ("| PaliGemma-3B-224, session 32 |", "amx-paligemma-3b-224-s32.json", True),
        ("| PaliGemma-3B-224, session 33 |", "amx-paligemma-3b-224-s33.json", True),
        (
            "| PaliGemma-3B-224, session 33, RMSNorm loop |",
            "amx-paligemma-3b-224-s33-rms.json",
            True,
        ),
        ("| PaliGemma-3B-224, session 33, end |", "amx-paligemma-3b-224-s33-end.json", True),
        ("| PaliGemma-3B-224, session 34 |", "amx-paligemma-3b-224-s34.json", True),
        ("| PaliGemma-3B-224, session 35 |", "amx-paligemma-3b-224-s35.json", True),
        ("| PaliGemma-3B-224, session 36 |", "amx-paligemma-3b-224-s36.json", True),
        ("| PaliGemma-3B-224, session 37 |", "amx-paligemma-3b-224-s37.json", True),
    ],
)
def test_final_224_table_is_its_json(header, file, with_bw):
    """A session's PaliGemma-3B-224 run: each cell is the JSON's value or its ratio
    (transformers' best per figure; our bfloat16 for the quantised first token; the bandwidth
    limit where the table shows it; batch 8 over batch 1)."""
    run = result(file)
    res = run["results"]
    first, decode, rss = reference_best(res)
    ours = res["ours bfloat16 (default)"]["first_token_s"]
    rows = runs_table(header, res)
    for name, cells in rows.items():
        r = res[name]
        expected = [r["first_token_s"], r["first_token_s"] / first, r["first_token_s"] / ours]
        expected += [r["decode_tok_s_b1"], r["decode_tok_s_b1"] / decode]
        if with_bw:
            expected += [100 * r["decode_tok_s_b1"] / r["bandwidth_limit_tok_s"]]
        expected += [r["decode_tok_s_b8"] / r["decode_tok_s_b1"], r["peak_rss_gb"]]
        expected += [r["peak_rss_gb"] / rss]
        check_row(cells, expected, name)


def test_decode_ops_paragraph_is_its_jsons():
    """ "A quantised step's small ops as loops": the A/B run's medians and ranges, and the
    quantised rows of the benchmark run after it."""
    ab = result("avx2-decode-ops-ab-s28.json")
    runs = result("avx2-paligemma-3b-224-s28-ours.json")["results"]
    i8, i4, bf = runs["ours int8"], runs["ours int4"], runs["ours bfloat16 (default)"]
    text = " ".join(DOCS.split())
    quotes = []
    for mode in ("int4", "int8"):
        a, o = ab[mode]["aten_tok_s"], ab[mode]["own_tok_s"]
        quotes.append(f"{mode} median {ab[mode]['median_ratio']:.2f}×" if mode == "int4" else
                      f"int8 {ab[mode]['median_ratio']:.2f}× (")  # fmt: skip
        quotes.append(f"{min(a):.2f}-{max(a):.2f}")
        quotes.append(f"{min(o):.2f}-{max(o):.2f}")
    for r, name in ((i8, "int8"), (i4, "int4")):
        pct = 100 * r["decode_tok_s_b1"] / r["bandwidth_limit_tok_s"]
        quotes.append(f"{name} {r['decode_tok_s_b1']:.2f} tok/s ({pct:.0f}% of its limit)"
                      if name == "int8" else
                      f"{name} {r['decode_tok_s_b1']:.2f} ({pct:.0f}%)")  # fmt: skip
    b8, b4 = (r["decode_tok_s_b8"] / r["decode_tok_s_b1"] for r in (i8, i4))
    quotes.append(f"batch 8 over batch 1 {b8:.1f}× / {b4:.1f}×")
    quotes.append(
        f"first token {i8['first_token_s']:.2f} s / {i4['first_token_s']:.2f} s against "
        f"bfloat16's {bf['first_token_s']:.2f} s"
    )
    for quoted in quotes:
        assert quoted in text, quoted


def test_int8_sign_paragraph_is_its_jsons():
    """ "int8 for 2 to 16 rows on plain AVX2": the kernel A/B's medians and the benchmark's
    quantised rows after it."""
    ab = result("avx2-int8-sign-ab-s29.json")["results"]
    runs = result("avx2-paligemma-3b-224-s29-quant.json")["results"]
    before = result("avx2-paligemma-3b-224-s28-ours.json")["results"]["ours int8"]
    i8, i4 = runs["ours int8"], runs["ours int4"]
    text = " ".join(DOCS.split())
    r = {k: ab[f"int8 dot ours default r{k}"]["ratio_median"] for k in (2, 4, 8, 16)}
    r8 = ab["int8 dot ours default r8"]
    int4 = [ab[f"int4 dot ours default r{k}"]["ratio_median"] for k in (1, 2, 4, 8, 16)]
    quotes = [
        f"int8 2 rows {r[2]:.2f}×, 4 rows {r[4]:.2f}×, 8 rows {r[8]:.2f}×",
        f"({r8['base_ms']:.2f} → {r8['this_ms']:.2f} ms), 16 rows {r[16]:.2f}×",
        f"int4, unchanged, {min(int4):.2f}-{max(int4):.2f}×",
        f"int8 batch 8 {i8['decode_tok_s_b8']:.2f} tok/s against {before['decode_tok_s_b8']:.2f}",
    ]
    for row, name in ((i8, "int8"), (i4, "int4")):
        pct = 100 * row["decode_tok_s_b1"] / row["bandwidth_limit_tok_s"]
        quotes.append(f"{row['decode_tok_s_b8'] / row['decode_tok_s_b1']:.1f}×")
        quotes.append(f"{row['decode_tok_s_b1']:.2f} tok/s, {pct:.0f}%" if name == "int8" else
                      f"int4 {row['decode_tok_s_b1']:.2f} tok/s ({pct:.0f}%)")  # fmt: skip
    for quoted in quotes:
        assert quoted in text, quoted
    assert all(x > 1.1 for x in r.values()) and min(int4) > 0.9 and max(int4) < 1.15


def test_int4_pairs_paragraph_is_its_jsons():
    """ "int4's one row, fewer operations per byte": both A/Bs and the benchmark's rows after."""
    inproc = result("avx2-int4-pairs-inprocess-s30.json")["results"]
    pairs = result("avx2-int4-pairs-ab-s30.json")["results"]
    runs = result("avx2-paligemma-3b-224-s30-quant.json")["results"]
    before = result("avx2-paligemma-3b-224-s29-quant.json")["results"]["ours int4"]
    text = " ".join(DOCS.split())

    def r(bits, o, i):
        return inproc[f"int{bits} {o}x{i} r1"]["ratio_median"]

    i8 = [r(8, o, i) for o, i in ((2560, 2048), (2048, 2048), (16384, 2048), (2048, 16384))]
    i8.append(r(8, 257216, 2048))
    p4, p8 = pairs["int4 dot ours default r1"], pairs["int8 dot ours default r1"]
    i4, i8run = runs["ours int4"], runs["ours int8"]
    quotes = [
        f"int4 q/k/v {r(4, 2560, 2048):.2f}×, o {r(4, 2048, 2048):.2f}×",
        f"gate / up {r(4, 16384, 2048):.2f}×, down {r(4, 2048, 16384):.2f}×",
        f"output head {r(4, 257216, 2048):.2f}×; int8, unchanged, {min(i8):.2f}-{max(i8):.2f}×",
        f"int4 {p4['ratio_median']:.2f}×, the unchanged int8 {p8['ratio_median']:.2f}×",
        f"per-pair ratios {min(p8['ratios']):.2f}-{max(p8['ratios']):.2f}",
        f"int4 {i4['decode_tok_s_b1']:.2f} tok/s against {before['decode_tok_s_b1']:.2f}",
        f"batch 8 {i4['decode_tok_s_b8']:.2f} "
        f"({i4['decode_tok_s_b8'] / i4['decode_tok_s_b1']:.1f}×)",
        f"{100 * i4['decode_tok_s_b1'] / i4['bandwidth_limit_tok_s']:.0f}% of its limit",
        f"probe read {i4['bandwidth_gbs']:.1f} GB/s",
        f"int8 {i8run['decode_tok_s_b1']:.2f} tok/s "
        f"({100 * i8run['decode_tok_s_b1'] / i8run['bandwidth_limit_tok_s']:.0f}%)",
    ]
    for quoted in quotes:
        assert quoted in text, quoted
    assert all(v["bit_exact"] for v in inproc.values())
    int4 = [v["ratio_median"] for k, v in inproc.items() if k.startswith("int4")]
    assert min(int4) > 1.0 and min(i8) > 0.95 and max(i8) < 1.05


def quantised_rows(runs: dict) -> list[str]:
    """How the README quotes the benchmark's "ours int8" / "ours int4" rows."""
    quotes = []
    for name in ("int8", "int4"):
        row = runs[f"ours {name}"]
        pct = 100 * row["decode_tok_s_b1"] / row["bandwidth_limit_tok_s"]
        quotes.append(
            f"{name} {row['decode_tok_s_b1']:.2f} tok/s ({pct:.0f}% of a "
            f"{row['bandwidth_gbs']:.1f} GB/s probe), batch 8 {row['decode_tok_s_b8']:.2f} "
            f"({row['decode_tok_s_b8'] / row['decode_tok_s_b1']:.1f}×)"
        )
    return quotes


def test_kept_plans_paragraph_is_its_jsons():
    """ "A step's plan, kept": the in-process A/B and the benchmark's quantised rows after."""
    ab = result("avx2-keep-plans-ab-s30.json")
    runs = result("avx2-paligemma-3b-224-s30-after.json")["results"]
    text = " ".join(DOCS.split())
    assert ab["switch"] == "KEEP_PLANS"
    quotes = [f"int8 {ab['int8']['median_ratio']:.2f}×, int4 {ab['int4']['median_ratio']:.2f}×"]
    quotes += quantised_rows(runs)
    for quoted in quotes:
        assert quoted in text, quoted
    assert ab["int8"]["median_ratio"] > 1.0 and ab["int4"]["median_ratio"] > 1.0


def test_one_call_paragraph_is_its_jsons():
    """ "A step's blocks in one call": the in-process A/B and the benchmark's rows after."""
    ab = result("avx2-one-call-ab-s31.json")
    runs = result("avx2-paligemma-3b-224-s31-quant.json")["results"]
    text = " ".join(DOCS.split())
    assert ab["switch"] == "ONE_CALL"
    i4, i8 = ab["int4"], ab["int8"]
    faster = sum(on > off for on, off in zip(i4["on_tok_s"], i4["off_tok_s"], strict=True))
    spread = i8["on_tok_s"] + i8["off_tok_s"]
    quotes = [
        f"int4 {i4['median_ratio']:.2f}×, int8 {i8['median_ratio']:.2f}×",
        f"int4 faster in {faster} of {len(i4['on_tok_s'])} rounds",
        f"int8's rounds spread {min(spread):.1f}-{max(spread):.1f} tok/s",
    ]
    quotes += quantised_rows(runs)
    for quoted in quotes:
        assert quoted in text, quoted
    assert i4["median_ratio"] > 1.0


def test_amx_session_paragraph_is_its_jsons():
    """ "Session 32: the AMX host again": the run before, the bfloat16-only run, the one-row A/B
    and the 448 px run, as quoted."""
    text = " ".join(DOCS.split())
    before = result("amx-paligemma-3b-224-s32-before.json")["results"]
    bf16 = result("amx-paligemma-3b-224-s32-bf16.json")["results"]
    at448 = result("amx-paligemma-3b-448-s32.json")["results"]
    ab = result("amx-wide-one-row-ab-s32.json")
    (first, hf_decode, _), (first_bf16, _, _) = reference_best(before), reference_best(bf16)
    ours, i4 = before["ours bfloat16 (default)"], before["ours int4"]
    i4_pct = 100 * i4["decode_tok_s_b1"] / i4["bandwidth_limit_tok_s"]
    new = bf16["ours bfloat16 (default)"]["first_token_s"]
    o448, s448 = at448["ours bfloat16 (default)"], at448["transformers bfloat16 sdpa"]
    quotes = [
        f"our first token {ours['first_token_s']:.2f} s against transformers' "
        f"{first:.2f} s ({ours['first_token_s'] / first:.2f}×)",
        f"int4 {i4['decode_tok_s_b1']:.2f} tok/s = {i4_pct:.0f}% of its limit and "
        f"{i4['decode_tok_s_b1'] / hf_decode:.2f}× transformers' bfloat16 decode",
        f"our first token {new:.2f} s against transformers' best {first_bf16:.2f} s "
        f"(**{new / first_bf16:.2f}×**)",
        f"amx-wide-one-row-ab-s32.json`: {ab['int4']['median_ratio']:.3f}×",
        f"our first token {o448['first_token_s']:.2f} s against SDPA's "
        f"{s448['first_token_s']:.2f} s (**{o448['first_token_s'] / s448['first_token_s']:.2f}×**",
        f"decode {o448['decode_tok_s_b1']:.2f} against {s448['decode_tok_s_b1']:.2f} tok/s",
    ]
    for quoted in quotes:
        assert quoted in text, quoted
    assert ab["switch"] == "WIDE_ONE_ROW"


def test_amx_second_run_sentence_is_its_json():
    """Session 32's second full run on the AMX host, as the README quotes it."""
    text = " ".join(DOCS.split())
    second = result("amx-paligemma-3b-224-s32-second.json")["results"]
    o2, i8, i4 = (second[k] for k in ("ours bfloat16 (default)", "ours int8", "ours int4"))
    first, decode, rss = reference_best(second)
    rate, b8 = "decode_tok_s_b1", "decode_tok_s_b8"
    quotes = [
        f"our first token {o2['first_token_s']:.2f} s against {first:.2f} s "
        f"({o2['first_token_s'] / first:.2f}×), decode {o2[rate] / decode:.2f}×, RSS "
        f"{o2['peak_rss_gb'] / rss:.2f}×",
        f"int8 at {100 * i8[rate] / i8['bandwidth_limit_tok_s']:.0f}% of its limit, int4 at "
        f"{100 * i4[rate] / i4['bandwidth_limit_tok_s']:.0f}% and {i4[rate] / decode:.2f}×",
        f"int8 {i8[b8] / i8[rate]:.2f}×, int4 {i4[b8] / i4[rate]:.2f}×",
        f"{i8['first_token_s'] / o2['first_token_s']:.2f}× / "
        f"{i4['first_token_s'] / o2['first_token_s']:.2f}× our bfloat16's",
    ]
    for quoted in quotes:
        assert quoted in text, quoted


@pytest.mark.parametrize("name", ["amx-quant-load-3b-s32.json", "amx-quant-load-3b-s33.json"])
def test_amx_quantised_load_sentence_is_its_json(name):
    """Sessions 32's and 33's quantised-load runs, as the README quotes them; since 33 (int8
    lookups in the head's codes) both peaks are within the issue's 0.75x / 0.6x."""
    run = result(name)
    text = " ".join(DOCS.split())
    i8, i4 = run["int8"], run["int4"]
    quoted = (
        f"bfloat16 in {run['bfloat16']['load_s']:.2f} s; int8 {i8['peak_ratio']:.3f}× its peak "
        f"in {i8['time_ratio']:.2f}× its time, int4 {i4['peak_ratio']:.3f}× in "
        f"{i4['time_ratio']:.2f}×"
    )
    assert quoted in text, quoted
    assert run["repeats"] == 3
    if name.endswith("s33.json"):
        assert i8["peak_ratio"] <= 0.75 and i4["peak_ratio"] <= 0.6
        assert i8["time_ratio"] <= 2 and i4["time_ratio"] <= 2


def test_amx_session_33_sentences_are_their_jsons():
    """ "Session 33": the two 224 px runs' ratios as the text quotes them, and the 448 px run."""
    text = " ".join(DOCS.split())
    a = result("amx-paligemma-3b-224-s33.json")["results"]
    b = result("amx-paligemma-3b-224-s33-rms.json")["results"]
    at448 = result("amx-paligemma-3b-448-s33.json")["results"]
    (fa, da, _), (fb, db, _) = reference_best(a), reference_best(b)
    oa, ob = a["ours bfloat16 (default)"], b["ours bfloat16 (default)"]
    i4a, i4b = a["ours int4"]["decode_tok_s_b1"], b["ours int4"]["decode_tok_s_b1"]
    o448, s448 = at448["ours bfloat16 (default)"], at448["transformers bfloat16 sdpa"]
    quotes = [
        f"our first token {oa['first_token_s'] / fa:.3f}× / {ob['first_token_s'] / fb:.3f}×",
        f"{i4a / da:.2f}× / {i4b / db:.3f}× transformers' decode",
        f"our first token {o448['first_token_s']:.2f} s against SDPA's "
        f"{s448['first_token_s']:.2f} s ({o448['first_token_s'] / s448['first_token_s']:.2f}×)",
        f"decode {o448['decode_tok_s_b1']:.2f} against {s448['decode_tok_s_b1']:.2f} tok/s",
    ]
    for quoted in quotes:
        assert quoted in text, quoted


def test_amx_int8_prefetch_hint_sentence_is_its_json():
    """ "Kept: int8_dot's prefetch into L2 only": the in-process A/B's per-shape medians."""
    run = result("amx-int8-prefetch-hint-ab-s33.json")
    text = " ".join(DOCS.split())
    medians = {bits: [] for bits in ("int8", "int4")}
    for name, r in run["results"].items():
        medians[name.split()[0]].append(r["ratio_median"])
        assert r["bit_exact"], name
    i8, i4 = medians["int8"], medians["int4"]
    assert f"gives int8 {min(i8):.2f}-{max(i8):.2f}× over" in text
    assert f"{min(i4):.2f}-{max(i4):.2f}× (the noise floor" in text
    assert run["in_process"] and run["rounds"] == 20 and min(i8) > 1.0


def amx_224_targets(file: str) -> dict:
    """A 224 px run's figures that the issue's targets are about: our first token, decode and
    RSS over the reference's best; int8's and int4's % of their limits, int4's decode over the
    reference's, their first token over ours and their batch 8 over batch 1."""
    res = result(file)["results"]
    first, decode, rss = reference_best(res)
    ours, i8, i4 = (res[k] for k in ("ours bfloat16 (default)", "ours int8", "ours int4"))
    rate, b8 = "decode_tok_s_b1", "decode_tok_s_b8"
    out = {"first": ours["first_token_s"] / first, "decode": ours[rate] / decode}
    out |= {"rss": ours["peak_rss_gb"] / rss, "i4_x": i4[rate] / decode}
    for name, r in (("i8", i8), ("i4", i4)):
        out[f"{name}_pct"] = 100 * r[rate] / r["bandwidth_limit_tok_s"]
        out[f"{name}_first"] = r["first_token_s"] / ours["first_token_s"]
        out[f"{name}_b8"] = r[b8] / r[rate]
    return out


TARGETS = {  # the issue's 224 px targets on amx_224_targets' figures
    "first": lambda t: t["first"] <= 0.8,
    "decode": lambda t: t["decode"] >= 1.0,
    "rss": lambda t: t["rss"] <= 1.0,
    "int8 bandwidth": lambda t: t["i8_pct"] >= 75,
    "int4 bandwidth": lambda t: t["i4_pct"] >= 70,
    "int4 over transformers": lambda t: t["i4_x"] >= 4,
    "quantised first": lambda t: max(t["i8_first"], t["i4_first"]) <= 1.2,
    "batching": lambda t: min(t["i8_b8"], t["i4_b8"]) >= 5,
}


def assert_targets(t: dict, missed: tuple[str, ...] = ()) -> None:
    """Every target holds but those in `missed`, which do not."""
    for name, holds in TARGETS.items():
        assert holds(t) == (name not in missed), (name, t)


def run_quote(file: str, later: bool) -> tuple[dict, str]:
    """A 224 px run's targets and its README sentence: a session's first run ("... the
    reference's, ... counting its codes alone)") or a later one (three places for our first
    token, the batching last)."""
    t = amx_224_targets(file)
    i4 = result(file)["results"]["ours int4"]
    codes = 100 * i4["decode_tok_s_b1"] / i4["bandwidth_limit_codes_tok_s"]
    t["i4_codes_pct"] = codes
    if later:
        return t, (
            f"our first token {t['first']:.3f}×, decode {t['decode']:.2f}×, RSS {t['rss']:.2f}×; "
            f"int8 at {t['i8_pct']:.0f}%; int8 / int4 first token {t['i8_first']:.2f}× / "
            f"{t['i4_first']:.2f}× ours; int4 at {t['i4_x']:.2f}× transformers' decode and "
            f"{t['i4_pct']:.0f}% of its limit ({codes:.0f}% by its codes); batch 8 over batch 1 "
            f"{t['i8_b8']:.2f}× / {t['i4_b8']:.2f}×"
        )
    return t, (
        f"our first token {t['first']:.2f}× the reference's, decode {t['decode']:.2f}×, RSS "
        f"{t['rss']:.2f}×; int8 at {t['i8_pct']:.0f}% of its limit; int8 / int4 first token "
        f"{t['i8_first']:.2f}× / {t['i4_first']:.2f}× ours; batch 8 over batch 1 "
        f"{t['i8_b8']:.2f}× / {t['i4_b8']:.2f}×; int4 at {t['i4_x']:.2f}× transformers' decode "
        f"and at {t['i4_pct']:.0f}% of its limit ({codes:.0f}% counting its codes alone)"
    )


def test_amx_session_33_end_run_meets_what_the_readme_says():
    """The end-of-session run: the sentence's figures, and each 224 px target it says holds."""
    t = amx_224_targets("amx-paligemma-3b-224-s33-end.json")
    text = " ".join(DOCS.split())
    quotes = [
        f"our first token {t['first']:.3f}× the reference's, decode {t['decode']:.2f}×, "
        f"RSS {t['rss']:.2f}×",
        f"int4 at {t['i4_pct']:.0f}% of its limit and {t['i4_x']:.2f}× transformers'",
        f"int8 at {t['i8_pct']:.0f}%; int8 / int4 first token {t['i8_first']:.2f}× / "
        f"{t['i4_first']:.2f}× ours",
        f"batch 8 over batch 1 {t['i8_b8']:.2f}× / {t['i4_b8']:.2f}×",
    ]
    for quoted in quotes:
        assert quoted in text, quoted
    assert t["first"] <= 0.8 and t["decode"] >= 1.0 and t["rss"] <= 1.0
    assert t["i4_pct"] >= 70 and t["i8_pct"] >= 75 and t["i4_x"] >= 4
    assert min(t["i8_b8"], t["i4_b8"]) >= 5 and max(t["i8_first"], t["i4_first"]) <= 1.2


def test_amx_session_34_448_sentence_is_its_json():
    """Session 34's 448 px run: the sentence's figures and the 0.8x target it says holds."""
    res = result("amx-paligemma-3b-448-s34.json")["results"]
    first, decode, rss = reference_best(res)
    ours = res["ours bfloat16 (default)"]
    text = " ".join(DOCS.split())
    quote = (
        f"our first token {ours['first_token_s']:.2f} s against {first:.2f} s "
        f"({ours['first_token_s'] / first:.3f}×), decode {ours['decode_tok_s_b1'] / decode:.2f}×, "
        f"RSS {ours['peak_rss_gb'] / rss:.2f}×"
    )
    assert quote in text, quote
    assert ours["first_token_s"] / first <= 0.8


def test_amx_session_35_sentences_are_their_jsons():
    """Session 35: the 224 px run's sentence (and the one target it misses), the 448 px run, the
    prefill A/Bs of benchmarks/ab_prefill.py and the int4 loop A/Bs that were not kept."""
    text = " ".join(DOCS.split())
    t = amx_224_targets("amx-paligemma-3b-224-s35.json")
    quotes = [
        f"our first token {t['first']:.3f}× the reference's, decode {t['decode']:.2f}×, RSS "
        f"{t['rss']:.2f}×; int8 at {t['i8_pct']:.0f}%; int8 / int4 first token "
        f"{t['i8_first']:.2f}× / {t['i4_first']:.2f}× ours; batch 8 over batch 1 "
        f"{t['i8_b8']:.2f}× / {t['i4_b8']:.2f}×; int4 at {t['i4_x']:.2f}× transformers' "
        f"decode, but at {t['i4_pct']:.0f}% of its limit",
    ]
    assert t["first"] <= 0.8 and t["decode"] >= 1.0 and t["rss"] <= 1.0 and t["i4_x"] >= 4
    assert t["i8_pct"] >= 75 and t["i4_pct"] < 70 and min(t["i8_b8"], t["i4_b8"]) >= 5
    assert max(t["i8_first"], t["i4_first"]) <= 1.2
    big = result("amx-paligemma-3b-448-s35.json")["results"]
    f448, d448, r448 = reference_best(big)
    o448 = big["ours bfloat16 (default)"]
    quotes.append(
        f"our first token {o448['first_token_s']:.2f} s against {f448:.2f} s "
        f"({o448['first_token_s'] / f448:.3f}×), decode {o448['decode_tok_s_b1'] / d448:.2f}×, "
        f"RSS {o448['peak_rss_gb'] / r448:.2f}×"
    )
    for size in (224, 448):
        prune = result(f"amx-prune-ab-{size}-s35.json")
        r = prune["prefill_s_ratios"]
        quotes.append(
            f"PRUNE at {size} px {prune['prefill_s_median_ratio']:.3f}× ({len(r)} rounds, "
            f"{min(r):.2f}-{max(r):.2f})"
        )
        malloc = result(f"amx-malloc-ab-{size}-s35.json")
        assert [x["malloc_set"] for x in malloc["on"]] == [True] * len(malloc["on"])
        assert not any(x["malloc_set"] for x in malloc["off"])
        r = malloc["prefill_s_ratios"]
        quotes.append(
            f"MALLOC at {size} px {malloc['prefill_s_median_ratio']:.3f}× ({len(r)} rounds, "
            f"{min(r):.2f}-{max(r):.2f}), decode {malloc['decode_tok_s_median_ratio']:.3f}×, "
            f"peak RSS {malloc['peak_rss_gb_median_ratio']:.3f}×"
        )
    kept = {"int4-slab": "24edaba"}
    for name in ("int4-row-loop", "dot-dynamic-tiles", "int4-scale-prefetch", "int4-slab"):
        ab = result(f"amx-{name}-ab-s35.json")
        assert ab["in_process"] and ab["kept"] == (name in kept)
        assert ab["base"] == kept.get(name, "5d721bf")
        ratios = {bits: [r["ratio_median"] for k, r in ab["results"].items() if k.startswith(bits)]
                  for bits in ("int4", "int8")}  # fmt: skip
        assert all(r["bit_exact"] for r in ab["results"].values())
        four, eight = ratios["int4"], ratios["int8"]
        assert min(four) > max(eight) if name in kept else True  # kept: above the noise floor
        quotes.append(
            f"int4 {min(four):.2f}-{max(four):.2f}× (int8 {min(eight):.2f}-{max(eight):.2f}×; "
            f"`amx-{name}-ab-s35.json`"
        )
    for quoted in quotes:
        assert quoted in text, quoted


def test_readme_speed_summary_is_the_latest_runs():
    """The README's own speed section (not only the record): the targets table, the latest
    224 px run and the 448 / 896 px runs, each cell its JSON's figure, and the record linked."""
    speed = README.split("\n### Speed and quantisation\n", 1)[1].split("\n## ", 1)[0]
    for header in ("| target | AMX host", "| PaliGemma-3B-224, AMX host, session 41 |"):
        assert "\n" + header in speed, header
    assert "| Higher resolutions, AMX host, session 40 |" in speed
    assert "[`benchmarks/RESULTS.md`](benchmarks/RESULTS.md)" in speed
    assert "\n**Session " not in speed  # the sessions' history lives in the record
    for header, file in (
        ("| PaliGemma-3B-224, AMX host, session 41 |", "amx-paligemma-3b-224-s41.json"),
        ("| PaliGemma-3B-224, Zen 5 host, session 42 |", "zen5-paligemma-3b-224-s42-end.json"),
    ):
        assert "\n" + header in speed, header
        runs = result(file)["results"]
        first, decode, rss = reference_best(runs)
        rows = runs_table(header, runs)
        for name, r in runs.items():
            rate, b8 = r["decode_tok_s_b1"], r["decode_tok_s_b8"]
            expected = [r["first_token_s"], r["first_token_s"] / first, rate, rate / decode]
            expected += [100 * rate / r["bandwidth_limit_tok_s"], b8, b8 / rate]
            check_row(rows[name], [*expected, r["peak_rss_gb"], r["peak_rss_gb"] / rss], name)
    high = dict(table("| Higher resolutions, AMX host, session 40 |"))
    files = {
        448: "amx-paligemma-3b-448-s40-run2.json",
        896: "amx-paligemma-3b-896-s40-attention.json",
    }
    for px, file in files.items():
        runs = result(file)["results"]
        first, decode, rss = reference_best(runs)
        labels = {
            name_of(label.split(": ", 1)[1]): label
            for label in high
            if label.startswith(f"{px} px")
        }
        assert set(labels) == {name_of(k) for k in runs}, (px, labels)
        for name, r in runs.items():
            rate, mem = r["decode_tok_s_b1"], r["peak_rss_gb"]
            expected = [r["first_token_s"], r["first_token_s"] / first, rate, rate / decode, mem]
            check_row(high[labels[name_of(name)]], [*expected, mem / rss], f"{px} {name}")


def test_where_the_speed_targets_stand_is_its_jsons():
    """The summary table: each cell is its run's figure, bold exactly where the target holds."""
    rows = dict(table("| target | AMX host"))

    def cell(values: list[float], fmt: str, ok: bool, tail: str = "") -> str:
        text = " / ".join(fmt.format(v) for v in values)
        return (f"**{text}**" if ok else text) + tail

    amx, zen5 = "amx-paligemma-3b-224-s41.json", "zen5-paligemma-3b-224-s42-end.json"
    for col, file in enumerate((amx, "avx2-paligemma-3b-224-s27.json", zen5)):
        res = result(file)["results"]
        ref = [v for k, v in res.items() if k.startswith("transformers")]
        rss_key = "peak_rss_gb" if all("decode_tok_s_b8" in v for v in ref) else "peak_rss_b1_gb"
        first, decode, _ = reference_best(res)
        rss = min(v[rss_key] for v in ref)  # batch-1 peaks where the reference ran batch 1 only
        ours, i8, i4 = (res[k] for k in ("ours bfloat16 (default)", "ours int8", "ours int4"))
        rate, b8 = "decode_tok_s_b1", "decode_tok_s_b8"
        pct = [100 * r[rate] / r["bandwidth_limit_tok_s"] for r in (i8, i4)]
        firsts = [r["first_token_s"] / ours["first_token_s"] for r in (i8, i4)]
        batch = [r[b8] / r[rate] for r in (i8, i4)]
        f, d, m = ours["first_token_s"] / first, ours[rate] / decode, ours[rss_key] / rss
        expected = {
            "default first token ≤ 0.8× the reference's": cell([f], "{:.2f}×", f <= 0.8),
            "default decode ≥ 1.0× the reference's": cell([d], "{:.2f}×", d >= 1.0),
            "default peak RSS ≤ 1.0× the reference's": cell([m], "{:.2f}×", m <= 1.0),
            "int8 decode ≥ 75% of its bandwidth limit": cell(pct[:1], "{:.0f}%", pct[0] >= 75),
            "int4 decode ≥ 70% of its bandwidth limit": cell(pct[1:], "{:.0f}%", pct[1] >= 70),
            "int4 decode ≥ 4× transformers' bfloat16": cell(
                [i4[rate] / decode], "{:.2f}×", i4[rate] / decode >= 4
            ),
            "int8 / int4 first token ≤ 1.2× our bfloat16's": cell(
                firsts, "{:.2f}×", max(firsts) <= 1.2
            ),
            "int8 / int4 batch 8 ≥ 5× batch 1": cell(batch, "{:.2f}×", min(batch) >= 5),
        }
        for target, text in expected.items():
            assert rows[target][col] == text, (file, target, rows[target][col], text)
    big = result("amx-paligemma-3b-448-s40-run2.json")["results"]
    ratio = big["ours bfloat16 (default)"]["first_token_s"] / reference_best(big)[0]
    at448 = rows["default first token ≤ 0.8× the reference's, 448 px"]
    zen = result("zen5-paligemma-3b-448-s42.json")["results"]
    zen448 = zen["ours bfloat16 (default)"]["first_token_s"] / reference_best(zen)[0]
    assert at448 == [
        cell([ratio], "{:.2f}×", ratio <= 0.8, " (session 40)"),
        "**0.74×** (session 25)",
        cell([zen448], "{:.2f}×", zen448 <= 0.8, " (session 42)"),
    ]
    z = result("zen5-paligemma-3b-448-s42.json")["results"]
    ours, ref = z["ours bfloat16 (default)"], z["transformers bfloat16 sdpa"]
    assert (
        f"our first token {ours['first_token_s']:.2f} s against transformers' "
        f"{ref['first_token_s']:.2f} ({zen448:.2f}×), decode {ours['decode_tok_s_b1']:.2f} tok/s "
        f"against {ref['decode_tok_s_b1']:.2f} "
        f"({ours['decode_tok_s_b1'] / ref['decode_tok_s_b1']:.2f}×), peak RSS "
        f"{ours['peak_rss_gb'] / ref['peak_rss_gb']:.2f}×" in " ".join(DOCS.split())
    )
    assert "(best against best 0.74×; target ≤ 0.8× at 448)" in " ".join(DOCS.split())
    load = result("amx-quant-load-3b-s33.json")
    i8, i4 = load["int8"], load["int4"]
    ok = (
        i8["peak_ratio"] <= 0.75
        and i4["peak_ratio"] <= 0.6
        and max(i8["time_ratio"], i4["time_ratio"]) <= 2
    )
    text = (
        f"{i8['peak_ratio']:.2f}× / {i4['peak_ratio']:.2f}×, "
        f"{i8['time_ratio']:.2f}× / {i4['time_ratio']:.2f}×"
    )
    load_row = rows["int8 / int4 load from bfloat16: peak ≤ 0.75× / 0.6×, time ≤ 2×"]
    assert load_row == [(f"**{text}**" if ok else text) + " (session 33)", "—", "—"]


def test_int4_layout_bound_sentence_is_its_runs():
    """benchmarks/int4_layout_bound.c's three runs: the ranges the README quotes and the
    interleaved layout's gain over today's in every run."""
    text = (RESULTS / "amx-int4-layout-bound-s35.txt").read_text()
    runs = [dict() for _ in range(text.count("one thread"))]
    run = -1
    for line in text.splitlines():
        if line.startswith("one thread"):
            run += 1
        elif "from L2" in line:
            name, figures = line.split("from L2")
            l2, memory = (float(v) for v in re.findall(r"\d+\.\d", figures))
            runs[run][name.strip()] = (l2, memory)
    assert len(runs) == 3

    def span(name: str, at: int) -> str:
        values = [r[name][at] for r in runs]
        return f"{min(values):.1f}-{max(values):.1f}"

    saved = [r[n][1] for r in runs for n in ("saved rows, T0", "saved rows, T1")]
    gains = [r["interleaved, T1"][1] / r["saved rows, T0"][1] for r in runs]
    mem_saved = f"{min(saved):.1f}-{max(saved):.1f}"
    quotes = [
        f"plain read {span('plain read', 1)} GB/s, saved rows {mem_saved}, interleaved with L2 "
        f"prefetches {span('interleaved, T1', 1)}, i.e. {min(gains):.2f}-{max(gains):.2f}× the "
        "saved rows with L1 prefetches",
    ]
    interleaved_l2 = [r[n][0] for r in runs for n in ("interleaved, T0", "interleaved, T1")]
    saved_l2 = [r[n][0] for r in runs for n in ("saved rows, T0", "saved rows, T1")]
    quotes.append(
        f"from {min(interleaved_l2):.1f}-{max(interleaved_l2):.1f} to "
        f"{min(saved_l2):.1f}-{max(saved_l2):.1f} GB/s"
    )
    flat = " ".join(DOCS.split())
    for quoted in quotes:
        assert quoted in flat, quoted
    assert min(gains) > 1.2


def test_amx_session_35_end_run_sentence_is_its_json():
    """The run after the kept one-row loop: the figures its sentence quotes."""
    res = result("amx-paligemma-3b-224-s35-end.json")["results"]
    first, decode, _ = reference_best(res)
    ours, i4, rate = res["ours bfloat16 (default)"], res["ours int4"], "decode_tok_s_b1"
    quote = (
        f"int4 at {100 * i4[rate] / i4['bandwidth_limit_tok_s']:.0f}% of its limit, "
        f"{i4[rate] / decode:.2f}× transformers' decode, batch 8 over batch 1 "
        f"{i4['decode_tok_s_b8'] / i4[rate]:.2f}×; our first token "
        f"{ours['first_token_s'] / first:.3f}×"
    )
    assert quote in " ".join(DOCS.split()), quote


def ab_range(file: str, keys: list[str], part: str | None = None) -> str:
    """An in-process A/B's per-shape median ratios over `keys`, as the README quotes a range."""
    run = result(file)
    res = (run[part] if part else run)["results"]
    ratios = [res[k]["ratio_median"] for k in keys]
    assert all(res[k]["bit_exact"] for k in keys)
    lo, hi = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    return f"{lo}-{hi}×" if lo != hi else f"{lo}×"


def test_amx_session_36_sentences_are_their_jsons():
    """Session 36: the kept prefetches' and loops' A/B ranges, the limit's bytes, and the run
    where every 224 px target holds on the AMX host (each target asserted)."""
    text = " ".join(DOCS.split())
    wide = ["2560x2048", "2048x2048", "16384x2048", "257216x2048"]  # I = 2,048
    every = [*wide, "2048x16384"]
    quotes = [
        "the next 16 rows' where a row is one slab (I = 2,048: q/k/v, o, gate/up and the head) "
        + ab_range("amx-slab-prefetch-next-rows-ab-s36.json", [f"int4 {s} r1" for s in wide]),
        "(down_proj, 2,048 × 16,384) "
        + ab_range("amx-slab-prefetch-amx-pipeline-ab-s36.json", ["int4 2048x16384 r1"]),
        "on the contiguous shapes, measured "
        + ab_range("amx-slab-prefetch-l1-ab-s36.json", [f"int4 {s} r1" for s in wide]),
        "twice as far ahead "
        + ab_range("amx-slab-prefetch-twice-ahead-ab-s36.json", [f"int4 {s} r1" for s in every]),
        "(int8 at 8 rows "
        + ab_range("amx-slab-prefetch-amx-pipeline-ab-s36.json", [f"int8 {s} r8" for s in every])
        + ", int4 "
        + ab_range("amx-slab-prefetch-amx-pipeline-ab-s36.json", [f"int4 {s} r8" for s in every]),
    ]
    tiles = "amx-tiles-prefetch-ab-s36.json"
    l2 = [ab_range(tiles, [f"int{b} {s} r8" for s in every], "l2_instead_of_l1") for b in (4, 8)]
    quotes.append(f"rather than L1 (int4 {l2[0]}, int8 {l2[1]})")
    down = [
        result(tiles)[part]["results"]["int4 2048x16384 r8"]["ratio_median"]
        for part in ("prefetch_rows_within_32kb", "int4_no_prefetch")
    ]
    quotes.append(f"(int4's down_proj {min(down):.2f}-{max(down):.2f}×")
    run = result("amx-paligemma-3b-224-s36.json")["results"]
    size = [
        run[f"ours {m}"]["weight_bytes_per_token"] / 1e9
        for m in ("bfloat16 (default)", "int8", "int4")
    ]
    quotes.append(
        f"{size[0]:.2f} GB in bfloat16, {size[1]:.2f} GB in int8, {size[2]:.2f} GB in int4"
    )
    t, quote = run_quote("amx-paligemma-3b-224-s36.json", later=False)
    quotes.append(quote)
    for quoted in quotes:
        assert quoted in text, quoted
    assert_targets(t)
    assert t["i4_codes_pct"] >= 70


@pytest.mark.parametrize(
    "file, tail",
    [
        ("amx-paligemma-3b-224-s36-second.json", "int4's batching missed its 5× there"),
        ("amx-paligemma-3b-224-s36-end.json", "int4's batching below 5× again"),
    ],
)
def test_amx_session_36_later_runs_are_their_jsons(file, tail):
    """Session 36's second and third 224 px runs: their figures, and the one target they miss
    (int4's batch 8 over batch 1); every other target asserted."""
    t, quote = run_quote(file, later=True)
    assert f"{quote}: {tail}" in " ".join(DOCS.split()), quote
    assert_targets(t, missed=("batching",))
    assert t["i8_b8"] >= 5 > t["i4_b8"]


def test_amx_session_36_attention_bullet_is_its_json():
    """benchmarks/bench_attend.py's run: the ms a step the README quotes per path."""
    res = result("amx-attend-s36.json")["results"]
    ms = {b: {p: v["ms_per_step"] for p, v in res[f"batch {b}"].items()} for b in (1, 8)}
    quote = (
        f"at batch 8 (280 keys) {ms[8]['2']:.2f} ms a step against the AVX2 loop's "
        f"{ms[8]['1']:.2f} ms (scalar {ms[8]['0']:.2f}), at batch 1 {ms[1]['2']:.2f} against "
        f"{ms[1]['1']:.2f} ms"
    )
    assert quote in " ".join(DOCS.split()), quote
    assert ms[8]["2"] < ms[8]["1"] < ms[8]["0"]


def test_amx_session_36_quantise_bullet_is_its_json():
    r = result("amx-quantize-x-threads-ab-s36.json")["results"]["int4 2048x16384 r8"]
    quote = f"int4's down_proj at 8 rows {r['ratio_median']:.2f}×, the rest unchanged"
    assert quote in " ".join(DOCS.split()), quote
    assert r["bit_exact"] and r["ratio_median"] > 1


def test_amx_session_37_bullets_are_their_jsons():
    """Session 37: the quantiser's, the reciprocal's, the bfloat16 store's and the NaN check's
    A/B ranges."""
    text = " ".join(DOCS.split())
    small = ["2560x2048", "2048x2048", "2048x16384"]  # q/k/v, o, down_proj
    wide = ["16384x2048", "257216x2048"]  # gate/up, the head
    every = [*small, *wide]
    rows = [f"int{b} {s} r{r}" for s in every for b in (4, 8) for r in (1, 8)]
    vector = "amx-quantize-vector-ab-s37.json"
    store = "amx-store-bf16-ab-s37.json"
    quotes = [
        "int4 at 8 rows "
        + ab_range(vector, [f"int4 {s} r8" for s in small])
        + " on q/k/v, o and down_proj, "
        + ab_range(vector, [f"int4 {s} r8" for s in wide])
        + " on gate/up and the head",
        "int8 at 8 rows " + ab_range(vector, [f"int8 {s} r8" for s in small]) + " on the same",
        "one row " + ab_range(vector, [f"int{b} {s} r1" for s in every for b in (4, 8)]),
        "(the same bits; tested): "
        + ab_range("amx-quantize-reciprocal-ab-s37.json", rows)
        + ", not kept",
        ab_range(store, rows)
        + " per shape, the head at 8 rows "
        + ab_range(store, ["int4 257216x2048 r8"]),
    ]
    quotes.append(
        "One compare per 16 values: "
        + ab_range("amx-quantize-nan-ab-s37.json", rows)
        + " over every shape and row count"
    )
    for quoted in quotes:
        assert quoted in text, quoted
    assert result(vector)["kept"] and not result("amx-quantize-reciprocal-ab-s37.json")["kept"]


def test_amx_session_37_runs_are_their_jsons():
    """Session 37's three 224 px runs: the first meets every target (int4's batching at 5.00x,
    quoted to three places), the second misses our first token's 0.8x only, the third (at
    d677907, before the NaN handling) meets every target."""
    text = " ".join(DOCS.split())
    t, quote = run_quote("amx-paligemma-3b-224-s37.json", later=False)
    quote += f". int4's batching is on its line ({t['i4_b8']:.3f}×)"
    assert quote in text, quote
    assert_targets(t)
    t, quote = run_quote("amx-paligemma-3b-224-s37-second.json", later=True)
    quote += ": our first token missed its 0.8× there"
    assert quote in text, quote
    assert_targets(t, missed=("first",))
    t, quote = run_quote("amx-paligemma-3b-224-s37-end.json", later=True)
    assert f"{quote}: every target held" in text, quote
    assert_targets(t)


def bf16_mm_range(file: str) -> str:
    """A bf16_mm A/B's per-shape median ratios (benchmarks/results, session 38), as quoted."""
    ratios = [r["ratio_median"] for r in result(file)["results"].values()]
    return f"{min(ratios):.2f}-{max(ratios):.2f}×"


def test_amx_session_38_sentences_are_their_jsons():
    """Session 38: the plain-AVX2 loops' A/B ranges (kept) and the three A/Bs not kept."""
    text = " ".join(DOCS.split())
    every = ["2560x2048", "2048x2048", "16384x2048", "2048x16384", "257216x2048"]
    slabs, sums = "amx-avx2-row-slabs-ab-s38.json", "amx-int16-sums-ab-s38.json"
    avx2, avx512 = "avx2 (--isa 1 --vnni 0)", "avx512 (--isa 2 --vnni 0)"
    quotes = [
        "int4 "
        + ab_range(slabs, [f"int4 {s} r1" for s in every])
        + ", int8 "
        + ab_range(slabs, [f"int8 {s} r1" for s in every])
        + " over the decoder's shapes",
        "one-row loops (int4 "
        + ab_range(slabs, [f"int4 {s} r1" for s in every])
        + ", int8 "
        + ab_range(slabs, [f"int8 {s} r1" for s in every])
        + " at the kernel level",
        "AVX2 loop "
        + ab_range(sums, [f"int4 {s} r{r}" for s in every for r in (8, 16)], avx2)
        + " at 8 and 16 rows, AVX-512 loop "
        + ab_range(sums, [f"int4 {s} r8" for s in every], avx512)
        + " at 8",
        "vector adds (" + bf16_mm_range("amx-bf16-mm-zero-c-ab-s38.json") + ",",
        "(bit-exact, " + bf16_mm_range("amx-bf16-mm-direct-a-ab-s38.json") + ",",
        "dynamically ("
        + ab_range(
            "amx-dot-dynamic-chunks-ab-s38.json",
            [f"int{b} {s} r{r}" for s in every for b in (4, 8) for r in (1, 8)],
        ),
    ]
    geglu = result("amx-geglu-ab-s38.json")
    ratios, off, on = (geglu[k] for k in ("prefill_s_ratios", "off_prefill_s", "on_prefill_s"))
    quotes.append(
        f"on / off {geglu['prefill_s_median_ratio']:.3f} (median of {len(ratios)} paired rounds, "
        f"{min(ratios):.2f}-{max(ratios):.2f}; {statistics.median(off):.3f} s against "
        f"{statistics.median(on):.3f} s"
    )
    for quoted in quotes:
        assert quoted in text, quoted
    quant = result("amx-geglu-quant-ab-s38.json")
    r8, r4 = (quant[m]["prefill_s_ratios"] for m in ("int8", "int4"))
    assert (
        f"on / off {quant['int8']['prefill_s_median_ratio']:.3f} (int8, {min(r8):.2f}-"
        f"{max(r8):.2f}) and {quant['int4']['prefill_s_median_ratio']:.3f} (int4, "
        f"{min(r4):.2f}-{max(r4):.2f}), medians of {len(r8)} paired rounds" in text
    )
    variants = " ".join(result(slabs)["variants_not_kept"].values())
    for figure in ("0.66-0.85x", "0.94-1.01x", "0.88-0.92x", "0.94-1.00x"):
        assert figure in variants, figure
    assert "the slabs ran at 0.66-0.85× of the old loop, prefetching into L1 0.94-1.01×" in text
    assert "slabs of 8 or 32 chunks 0.88-1.00× of 16's" in text
    assert result(slabs)["kept"] and result(sums)["kept"]
    for file in ("zero-c", "direct-a"):
        assert not result(f"amx-bf16-mm-{file}-ab-s38.json")["kept"]
    assert not result("amx-dot-dynamic-chunks-ab-s38.json")["kept"]


@pytest.mark.parametrize(
    "file",
    [
        "amx-paligemma-3b-224-s38.json",
        "amx-paligemma-3b-224-s38-geglu.json",
        "amx-paligemma-3b-224-s38-end.json",
    ],
)
def test_amx_session_38_runs_are_their_jsons(file):
    """Session 38's 224 px runs, before and after the fused GeGLU and at the last commit: their
    sentences (the second with our first token's seconds between), every target held."""
    t, quote = run_quote(file, later=True)
    text = " ".join(DOCS.split())
    if file.endswith("geglu.json"):
        res, before = result(file)["results"], result("amx-paligemma-3b-224-s38.json")["results"]
        first = res["ours bfloat16 (default)"]["first_token_s"]
        was = before["ours bfloat16 (default)"]["first_token_s"]
        head, tail = quote.split(", decode", 1)
        quote = f"{head} ({first:.3f} s against {was:.3f} s in"
        assert quote in text and "decode" + tail + ": every 224 px target held" in text, tail
    else:
        assert quote + ": every 224 px target held" in text, quote
    assert_targets(t)


def paired(file: str) -> tuple[str, list[float], dict]:
    """An ab_prefill.py toggle's median ratio (3 places), its per-round ratios, and the run."""
    run = result(file)
    return f"{run['prefill_s_median_ratio']:.3f}", run["prefill_s_ratios"], run


def test_amx_session_39_sentences_are_their_jsons():
    """Session 39: the two switches' paired A/Bs and the quantised rows on the AVX2 path."""
    text = " ".join(DOCS.split())
    median, ratios, gelu = paired("amx-gelu-fc1-ab-s39.json")
    off, on = (statistics.median(gelu[k]) for k in ("off_prefill_s", "on_prefill_s"))
    assert (
        f"On / off {median} (median of {len(ratios)} paired rounds, {min(ratios):.2f}-"
        f"{max(ratios):.2f}; {off:.3f} s against {on:.3f} s" in text
    )
    assert float(median) < 1 and gelu["fused_gelu"] is True
    median, ratios, together = paired("amx-qkv-together-ab-s39.json")
    faster = sum(r < 1 for r in ratios)
    assert (
        f"off {median} (median of {len(ratios)} paired rounds, {min(ratios):.2f}-"
        f"{max(ratios):.2f}, on faster in {faster};" in text
    )
    assert float(median) < 1 and together["together"] is True
    quant = [paired(f"amx-qkv-together-ab-s39-{m}.json") for m in ("int8", "int4")]
    assert (
        f"on / off {quant[0][0]} (int8) and {quant[1][0]} (int4), medians of "
        f"{len(quant[0][1])} paired rounds" in text
    )
    assert all(
        run["model"].endswith(m) for (_, _, run), m in zip(quant, ("int8", "int4"), strict=True)
    )
    avx2 = result("amx-host-avx2-path-s39.json")
    i8, i4 = (avx2["results"][f"ours int{b}"] for b in (8, 4))
    pct = [100 * r["decode_tok_s_b1"] / r["bandwidth_limit_tok_s"] for r in (i8, i4)]
    b8 = [r["decode_tok_s_b8"] / r["decode_tok_s_b1"] for r in (i8, i4)]
    assert (
        f"int8 {i8['decode_tok_s_b1']:.2f} tok/s ({pct[0]:.0f}% of a {avx2['bandwidth_gbs']:.1f} "
        f"GB/s probe" in text
    )
    assert (
        f"int4 {i4['decode_tok_s_b1']:.2f} ({pct[1]:.0f}%); batch 8 over batch 1 {b8[0]:.1f}× / "
        f"{b8[1]:.1f}× ({i8['decode_tok_s_b8']:.2f} / {i4['decode_tok_s_b8']:.2f} tok/s)" in text
    )


@pytest.mark.parametrize(
    "file", ["amx-paligemma-3b-224-s39.json", "amx-paligemma-3b-224-s39-end.json"]
)
def test_amx_session_39_runs_are_their_jsons(file):
    """Session 39's 224 px runs: their sentences, every target held."""
    t, quote = run_quote(file, later=True)
    assert quote + ": every 224 px target held" in " ".join(DOCS.split()), quote
    assert_targets(t)


def test_amx_session_39_448_sentence_is_its_json():
    """Session 39's 448 px run: the sentence's figures, and the 448 px target holding."""
    big = result("amx-paligemma-3b-448-s39.json")["results"]
    first, decode, _ = reference_best(big)
    ours = big["ours bfloat16 (default)"]
    ref_rss = min(v["peak_rss_gb"] for k, v in big.items() if k.startswith("transformers"))
    ratio = ours["first_token_s"] / first
    quote = (
        f"our first token {ours['first_token_s']:.2f} s against transformers' SDPA {first:.2f} s "
        f"({ratio:.3f}×; 0.706× in session 35), decode {ours['decode_tok_s_b1'] / decode:.2f}×, "
        f"RSS {ours['peak_rss_gb'] / ref_rss:.2f}×: the 448 px target holds"
    )
    assert quote in " ".join(DOCS.split()), quote
    assert ratio <= 0.8 and first == big["transformers bfloat16 sdpa"]["first_token_s"]


def test_amx_session_40_sentences_are_their_jsons():
    """Session 40: the attention kernel alone and switched in one process, the 224 px run
    (every target held) and the 448 / 896 px runs, as the README quotes them."""
    text = " ".join(DOCS.split())
    alone = result("amx-prefill-attention-s40.json")["results"]
    for tower in ("gemma", "siglip"):
        for size in (224, 448, 896):
            r = alone[f"{tower} {size}"]
            pair = f"{r['ours']['ms']:.2f} against {r['pytorch']['ms']:.2f} ms at {size} px"
            assert pair in text, pair
            ratio = f"({r['ours_over_pytorch']:.2f}×"
            assert ratio in text.split(pair, 1)[1][:12], (pair, ratio)
    gemma = [alone[f"gemma {size}"]["ours_over_pytorch"] for size in (224, 448, 896)]
    assert max(gemma) < 0.6  # Gemma's: about twice as fast at every size
    runs = (("-s40-relayout", "224"), ("-s40", "224"), ("-448-s40", "448"), ("-896-s40", "896"))
    for file, size in runs:
        median, ratios, run = paired(f"amx-attention-ab{file}.json")
        quote = f"{median} at {size} px"
        assert quote in text, quote
        assert float(median) < 1 and run["attention"] is True
        assert f"{min(ratios):.2f}-{max(ratios):.2f}" in text.split(quote, 1)[1][:80]
    t, quote = run_quote("amx-paligemma-3b-224-s40.json", later=True)
    assert quote + ": every 224 px target held" in text, quote
    assert_targets(t)
    for file in ("amx-paligemma-3b-448-s40.json", "amx-paligemma-3b-448-s40-run2.json"):
        big = result(file)["results"]
        first = reference_best(big)[0]
        ours = big["ours bfloat16 (default)"]["first_token_s"]
        assert first == big["transformers bfloat16 sdpa"]["first_token_s"]
        assert f"{ours:.2f} s against" in text and f"{first:.2f} s ({ours / first:.3f}×" in text
        assert ours / first <= 0.8
    for file in ("amx-paligemma-3b-896-s40-attention.json", "amx-paligemma-3b-896-s40.json"):
        big = result(file)["results"]
        ours = big["ours bfloat16 (default)"]["first_token_s"]
        sdpa = big["transformers bfloat16 sdpa"]["first_token_s"]
        assert f"{ours:.2f} s against" in text and f"{sdpa:.2f} s ({ours / sdpa:.3f}×)" in text


def test_session_41_attention_ab_is_its_json():
    """Session 41's kernel A/B (ab_builds.py --attention): the base / this medians quoted."""
    res = result("amx-attention-copies-ab-s41.json")
    assert res["attention"] == [224, 448] and res["pairs"] == 6
    r = {name: v["ratio_median"] for name, v in res["results"].items()}
    quote = (
        f"SigLIP {r['siglip 224']:.2f}× at 224 px and {r['siglip 448']:.2f}× at 448, Gemma "
        f"{r['gemma 224']:.2f}× at 224 px and {r['gemma 448']:.2f}× at 448"
    )
    assert quote in " ".join(DOCS.split()), quote
    assert min(r.values()) > 1.0  # the change is faster at every shape


def test_session_41_avx2_batch_figures_are_their_files():
    """Session 41's plain-AVX2 batching: the bound program's ranges, the in-process A/B's int4
    range and the forced-AVX2 run's batch 8 over batch 1, as quoted."""
    text = " ".join(DOCS.split())
    bound = (RESULTS / "amx-host-avx2-batch-bound-s41.txt").read_text()
    runs = {}
    for name in ("alone", "unpacking and broadcasts"):
        pattern = rf"{name} +([\d.]+) G products/s -> batch 8 at most +([\d.]+) tok/s = ([\d.]+)x"
        runs[name] = [tuple(map(float, m)) for m in re.findall(pattern, bound)]
        assert len(runs[name]) == 3, name
    lo, hi = (f(r[0] for r in runs["alone"]) for f in (min, max))
    assert f"the two instructions alone {lo:.0f}-{hi:.0f} G products a second" in text
    ratios = [r[2] for r in runs["unpacking and broadcasts"]]
    assert f"would allow {min(ratios):.1f}-{max(ratios):.1f}× the bandwidth-limited batch 1" in text
    ab = result("amx-avx2-batch-ab-s41.json")
    assert ab["in_process"] and ab["isa"] == 1 and ab["vnni"] == 0 and ab["rows"] == [8]
    int4 = [v["ratio_median"] for k, v in ab["results"].items() if k.startswith("int4")]
    assert f"int4 {min(int4):.2f}-{max(int4):.2f}x over the decoder's shapes" in text
    assert all(v["bit_exact"] for v in ab["results"].values())
    res = result("amx-host-avx2-path-s41.json")["results"]
    i4, i8 = res["ours int4"], res["ours int8"]
    b8 = {k: r["decode_tok_s_b8"] / r["decode_tok_s_b1"] for k, r in (("i4", i4), ("i8", i8))}
    assert f"{i4['decode_tok_s_b1']:.2f} tok/s at batch 1" in text
    assert f"{i4['decode_tok_s_b8']:.2f} at batch 8: {b8['i4']:.2f}x" in text
    assert (
        f"int8 {i8['decode_tok_s_b1']:.2f} and {i8['decode_tok_s_b8']:.2f}: {b8['i8']:.2f}x" in text
    )


def test_session_41_full_run_is_its_json():
    """Session 41's 224 px run (the targets table's): its sentence, every target held."""
    t, quote = run_quote("amx-paligemma-3b-224-s41.json", later=True)
    assert quote + ": every 224 px target held" in " ".join(DOCS.split()), quote
    assert_targets(t)


def test_session_42_figures_are_their_files():
    """The Zen 5 host's record: bf16_mv's kernel table, the WIDE_ONE_ROW A/B, the plain-AVX2
    path's run, avx2_batch_bound.c's three runs and the first run's sentence."""
    text = " ".join(DOCS.split())
    gbs = {
        int(rows): {k: round(v["gb_s"], 1) for k, v in t.items()}
        for rows, t in result("zen5-bf16-mv-kernels-s42.json")["tables"].items()
    }
    ours, avx2, lin = (
        f"bfloat16 {k}" for k in ("ours bf16_mv avx512", "ours bf16_mv avx2", "torch F.linear")
    )
    one = gbs[1]
    assert (
        f"one row {one[ours]} GB/s on AVX-512 and {one[avx2]} on AVX2 against `torch.mv`'s "
        f"{one['bfloat16 torch.mv']} and F.linear's {one[lin]}; two rows {gbs[2][ours]} against "
        f"F.linear's {gbs[2][lin]}; eight rows {gbs[8][ours]} against {gbs[8][lin]} (the AVX2 "
        f"path's {gbs[8][avx2]}" in text
    )
    tiles = result("zen5-bf16-mv-kernels-s42-avx2tiles.json")["tables"]["8"]
    assert (
        f"tiles of 4, {tiles[avx2]['gb_s']:.1f} against F.linear's {tiles[lin]['gb_s']:.1f} in "
        "its own run" in text
    )
    ab = result("zen5-wide-one-row-ab-s42.json")["int4"]
    off, on = ab["off_tok_s"], ab["on_tok_s"]
    assert all(a > b for a, b in zip(off, on, strict=True))  # "every round"
    assert (
        f"AVX-512-VNNI / AVX-VNNI **{ab['median_ratio']:.3f}×** (AVX-VNNI {min(off):.1f}-"
        f"{max(off):.1f} tok/s, AVX-512-VNNI {min(on):.1f}-{max(on):.1f}, every round)" in text
    )
    runs = result("zen5-avx2-path-s42.json")["results"]
    b16, i8, i4 = (runs[f"ours {k}"] for k in ("bfloat16 (default)", "int8", "int4"))
    ratios = " / ".join(
        f"{x['decode_tok_s_b8'] / x['decode_tok_s_b1']:.1f}×" for x in (b16, i8, i4)
    )
    assert (
        f"bfloat16 {b16['decode_tok_s_b1']:.2f} tok/s, int8 {i8['decode_tok_s_b1']:.2f}, int4 "
        f"{i4['decode_tok_s_b1']:.2f} at batch 1; batch 8 over batch 1 {ratios}" in text
    )
    bound = (RESULTS / "zen5-avx2-batch-bound-s42.txt").read_text()
    nums = lambda pat: [float(x) for x in re.findall(pat, bound)]  # noqa: E731
    alone = nums(r"VPMADDUBSW \+ VPADDW alone\s+([\d.]+) G")
    real = nums(r"unpacking and broadcasts\s+([\d.]+) G")
    bw = nums(r"streaming sum\)\s+([\d.]+) GB/s")
    x = nums(r"unpacking and broadcasts.*= ([\d.]+)x")
    assert len(alone) == len(real) == len(bw) == len(x) == 3
    assert (
        f"alone {min(alone):.0f}-{max(alone):.0f} G products/s, with unpacking and broadcasts "
        f"{min(real):.0f}-{max(real):.0f} G, against a bandwidth of {min(bw):.1f}-{max(bw):.1f} "
        f"GB/s: batch 8 could reach at most {min(x):.1f}-{max(x):.1f}×" in text
    )
    runs = {
        k: run_quote(f"zen5-paligemma-3b-224-s42{k}.json", later=True)[0]
        for k in ("", "-mv", "-end")
    }
    pct = (
        ", ".join(f"{runs[k]['i4_pct']:.0f}%" for k in ("", "-mv"))
        + f" and {runs['-end']['i4_pct']:.0f}%"
    )
    firsts = sorted(t["first"] for t in runs.values())
    assert (
        f"(`bf16_mv.cpp`: {runs['']['decode']:.2f}× the reference's before it, "
        f"{runs['-end']['decode']:.2f}-{runs['-mv']['decode']:.2f}× after)"
        in text
        and f"the first token ({firsts[0]:.2f}-{firsts[-1]:.2f}×, and" in text
        and f"was {runs['']['i8_b8']:.2f}× / {runs['']['i4_b8']:.2f}× before these changes" in text
        and f"(int4 at one row {pct} in the session's three runs)" in text
    )
    assert run_quote("zen5-paligemma-3b-224-s42-end.json", later=True)[1] in text
    t = runs[""]
    assert (
        f"our first token {t['first']:.3f}×, decode **{t['decode']:.2f}×**" in text
        and f"int8 at {t['i8_pct']:.0f}% of its limit; int4 at {t['i4_pct']:.0f}%" in text
        and f"batch 8 over batch 1 {t['i8_b8']:.2f}× / {t['i4_b8']:.2f}×" in text
    )
