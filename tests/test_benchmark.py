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
