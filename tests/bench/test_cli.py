"""The benchmark CLI: runs on CPU, stable JSON, FLOP/byte models against hand counts, skipped
backends reported with their reason (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from intl_kernels.bench.cases import PRESETS, Case, bytes_moved, expand, flops, parse_shape
from intl_kernels.bench.cli import main, metadata

ROW_KEYS = {
    "case", "axis", "T", "mode", "backend", "median_s", "min_s", "max_s", "repeats", "speedup_vs_reference",
    "speedup_vs_compile", "tflops", "gbytes_per_s", "flops", "bytes", "floor_s", "time_over_floor",
    "peak_memory_mb",
}  # fmt: skip
META_KEYS = {"command", "date", "intl_kernels", "torch", "python", "device", "cpu", "threads", "dtype",
             "matmul_tflops", "copy_gbytes_per_s"}  # fmt: skip


def test_quick_run_writes_a_stable_json_csv_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot draws with matplotlib")
    paths = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "png")}
    # One small shape: each torch.compile of the baseline costs seconds (--quick compiles 8).
    outputs = ["--json", str(paths["json"]), "--csv", str(paths["csv"]), "--plot", str(paths["png"])]
    assert main(["--shapes", "64x128", "--axis", "0", "--repeats", "3", *outputs]) == 0
    data = json.loads(paths["json"].read_text())
    assert set(data["meta"]) == META_KEYS
    timed = [row for row in data["rows"] if "skipped" not in row]
    assert {row["backend"] for row in timed} >= {"reference", "compile", "torch"}
    assert {row["mode"] for row in timed} == {"forward", "forward+backward"}
    for row in timed:
        assert ROW_KEYS <= set(row)
        assert row["min_s"] <= row["median_s"] <= row["max_s"] and row["repeats"] == 3
    compiled = [row for row in timed if row["backend"] == "compile"]
    assert all(row["compile_s"] > 0 for row in compiled)
    assert paths["csv"].read_text().startswith("case,") and paths["png"].stat().st_size > 0
    assert "reference" in capsys.readouterr().out


def test_unusable_backend_is_skipped_with_its_reason(tmp_path, capsys):
    argv = [
        "--shapes",
        "8x12",
        "--axis",
        "0",
        "--repeats",
        "1",
        "--backends",
        "torch",
        "cuda",
        "--no-compile",
    ]
    assert main([*argv, "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    skipped = [row for row in rows if "skipped" in row]
    assert [row["backend"] for row in skipped] == ["cuda"] and "cannot run on cpu" in skipped[0]["skipped"]
    assert "skipped: backend 'cuda'" in capsys.readouterr().out


def test_grouped_and_multi_view_cases_run(tmp_path):
    assert (
        main(["--shapes", "40x8:2", "--repeats", "1", "--no-compile", "--json", str(tmp_path / "r.json")])
        == 0
    )
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert {row["case"] for row in rows} == {"40x8:2"}


def test_flop_and_byte_models_against_hand_counts():
    # p=4 samples whitened over q=6 features: n=4, m=6, T=3 (2 paid Newton steps).
    case = Case(n=4, d=6, axis=0, iterations=3)
    assert flops(case, backward=False) == 4 * 5 * 6 + 6 * 4**3 * 2 + 2 * 4**2 * 6  # 1080
    assert flops(case, backward=True) == 1080 + 6 * 4**2 * 6 + 10 * 4**3 * 2  # 2936
    assert bytes_moved(case, backward=False, element_size=4) == 2 * 24 * 4 + 3 * 16 * 4
    assert bytes_moved(case, backward=True, element_size=2) == 5 * 24 * 2 + 6 * 16 * 4
    # axis 1 of the same batch: 6 features over 4 samples, the same smaller space.
    assert flops(Case(n=4, d=6, axis=1, iterations=3), backward=True) == 2936
    # The IterNorm layer: 2 groups of 4 channels over 10 samples, T=5, 3 views.
    layer = Case(n=10, d=8, groups=2, views=3, iterations=5)
    assert flops(layer, backward=False) == 3 * 2 * (4 * 5 * 10 + 6 * 4**3 * 4 + 2 * 4**2 * 10)
    assert flops(Case(n=4, d=6, iterations=1), backward=True) == 4 * 5 * 6 + 2 * 16 * 6 + 6 * 16 * 6


def test_presets_and_shapes():
    assert parse_shape("100352x512:8") == (100352, 512, 8)
    with pytest.raises(ValueError, match="groups dividing D"):
        parse_shape("10x512:7")
    with pytest.raises(ValueError, match="shape must look like"):
        parse_shape("axb")
    assert {"intl-cifar", "intl-in100", "intl-imagenet", "multicrop", "large-batch", "square",
            "iternorm-layer", "cpu-small", "all"} <= set(PRESETS)  # fmt: skip
    layer = expand(PRESETS["iternorm-layer"], [0, 1], None)
    assert layer == [Case(n=100352, d=512, groups=8, iterations=5)]
    assert layer[0].group_shape == (8, 64, 100352)
    assert [c.views for c in expand(PRESETS["multicrop"], [0], 4)] == [6]


def test_train_step_benchmark_runs(tmp_path, capsys):
    pytest.importorskip("torchvision", reason="the train step builds a torchvision ResNet")
    argv = [
        "--train-step",
        "--batch",
        "4",
        "--image-size",
        "32",
        "--backbone",
        "resnet18",
        "--projector",
        "64",
        "64",
    ]
    assert main([*argv, "--repeats", "1", "--backends", "torch", "--json", str(tmp_path / "t.json")]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())["train_step"]
    assert [row["backend"] for row in rows] == ["reference", "torch"]
    assert all(0 < row["whitening_share"] and row["images_per_s"] > 0 for row in rows)


def test_package_switches_are_part_of_the_recorded_command(monkeypatch):
    monkeypatch.setenv("INTL_TRITON_PRECISION", "ieee")
    monkeypatch.setenv("UNRELATED_VARIABLE", "1")
    meta = metadata(["--quick"], torch.device("cpu"), "float32")
    command = meta["command"]
    assert command.startswith("INTL_TRITON_PRECISION=ieee ") and command.endswith("intl-bench --quick")
    assert "UNRELATED_VARIABLE" not in command


def test_a_run_cut_short_keeps_the_cases_it_measured(tmp_path, monkeypatch):
    import intl_kernels.bench.cli as cli

    measured = cli.bench_case

    def bench_case(case, *args, **kwargs):
        if case.d == 12:
            raise KeyboardInterrupt  # what a time limit's signal does to the run
        return measured(case, *args, **kwargs)

    monkeypatch.setattr(cli, "bench_case", bench_case)
    path = tmp_path / "r.json"
    argv = ["--shapes", "8x10", "8x12", "--axis", "0", "--repeats", "1", "--backends", "torch"]
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--no-compile", "--json", str(path)])
    rows = json.loads(path.read_text())["rows"]
    assert rows and {row["case"] for row in rows} == {"8x10"}


def test_power_transform_runs_against_the_eigh_baseline(tmp_path):
    argv = ["--shapes", "8x12", "--axis", "1", "--repeats", "1", "--no-compile", "--transform", "power:0.5"]
    assert main([*argv, "--backends", "torch", "cpp", "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    timed = [row for row in rows if "skipped" not in row]
    assert {row["backend"] for row in timed} == {"reference", "torch"}
    assert {row["transform"] for row in rows} == {"power:0.5"}
    skipped = [row for row in rows if "skipped" in row]
    assert [row["backend"] for row in skipped] == ["cpp"]
    assert "does not implement the 'power' transformation" in skipped[0]["skipped"]


def test_power_flop_model_against_a_hand_count():
    # n = 4, m = 6: Gram 4*5*6, eigh 9*64 + U diag U^T 2*64, whitening 2*16*6; backward 6*16*6 + 8*64.
    case = Case(n=4, d=6, axis=0, transform="power:0.5")
    assert flops(case, backward=False) == 120 + 11 * 64 + 192
    assert flops(case, backward=True) == 120 + 11 * 64 + 192 + 576 + 512
    for unsupported in ("zca", "iternorm_spectral:20"):  # the second would time the Newton form
        with pytest.raises(SystemExit):
            main(["--transform", unsupported, "--shapes", "8x12"])
