import importlib.util
from pathlib import Path


def test_benchmark_script_runs_and_checks_naive_equals_ours(capsys, tmp_path):
    """The benchmark asserts identical masks itself; here it runs in quick mode (tiny models)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"
    spec = importlib.util.spec_from_file_location("bench_pipeline", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for table in (
        "| long side | masks | SAM s",
        "| masks (boxes,",
        "| classes scored",
        "| CLIP image encoder, batch size",
        "| SAM variant",
        "sweep over 100 cached images",
    ):
        assert table in out, f"benchmark output lacks {table!r}"


def test_the_gpu_check_compares_a_device_with_the_cpu(capsys):
    """benchmarks/check_gpu.py on the CPU against itself (its smoke test; on a GPU it is benchmarks/gpu_checks.sh's
    first step): the float32 row must give the reference's masks and answers exactly, and say so."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_gpu.py"
    spec = importlib.util.spec_from_file_location("check_gpu", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.main(["--device", "cpu", "--images", "1", "--precisions"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cpu float32 |")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[3:5] == ["1.0000", "0.0e+00"] and cells[6] == "1.0000 / 1.0000", rows[0]  # masks, embeddings, answers
