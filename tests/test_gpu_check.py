"""scripts/gpu_check.py end to end on CPU at tiny sizes (`--device cpu --tiny`), so that it runs the first time it
meets a GPU: every check and every timing row is reported, the GPU-only ones as skipped with the reason."""

import importlib.util
import json

import pytest

import gpu_check

pytestmark = pytest.mark.slow  # the whole command: a model per check, every timed layer, 2 gloo ranks

CPU_ONLY_SKIPS = {  # check -> why it cannot run on CPU
    "fla prefill vs plain chunked path (padded, cached, decode; packed, gradient)": "CUDA only",
    "grouped-mm experts vs per-expert loop": "CUDA only",
    "static-cache compiled decode (CUDA graphs) vs dynamic cache": "need a CUDA device",
}


@pytest.mark.slow  # torchrun subprocesses (tensor-parallel and 8-bit decode steps)
def test_gpu_check_runs_end_to_end_on_cpu_tiny(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--reps", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["device"].startswith("CPU") and result["tiny"]

    checks = {c["check"]: c for c in result["checks"]}
    for name, reason in CPU_ONLY_SKIPS.items():
        assert checks[name]["status"] == "skipped" and reason in checks[name]["note"]
    assert checks["bf16 vs fp32 logits"]["status"] == "pass"
    assert 1e-4 < checks["bf16 vs fp32 logits"]["error"] < 5e-2  # bf16 rounding shows, within the tolerance
    assert checks["static-cache generate vs dynamic cache (eager)"]["status"] == "pass"

    rows = result["timings"]
    sections = {r["what"] for r in rows}
    assert {"lightning layer prefill", "lightning layer long prefill", "MoE block"} <= sections
    assert any(s.startswith("lightning decode step") for s in sections)
    assert any(s.startswith("softmax decode step") for s in sections)
    assert any(s.startswith("expert matmul") for s in sections)
    tensor_parallel = {r["impl"] for r in rows if r["what"] == "decode step, 2-layer model, tensor parallel"}
    assert tensor_parallel == {"1 device", "tensor parallel 2"}  # 2 gloo ranks on CPU, the NCCL path on GPUs
    eight_bit = {r["impl"]: r for r in rows if r["what"] == "decode step, 2-layer model, 8-bit weights"}
    assert set(eight_bit) == {"float32, 1 device", "int8 (torchao), 1 device", "int8 (torchao), tensor parallel 2",
                              "FP8 (FineGrainedFP8), 1 device"}  # fmt: skip
    for row in rows:
        if "CUDA graph" in row["impl"] or "FineGrainedFP8" in row["impl"]:
            assert row["status"] == "skipped" and "CUDA" in row["note"]
        else:
            assert row["status"] == "ok" and row["ms"] > 0, row
    assert {r["impl"] for r in rows if r["what"] == "lightning layer prefill"} == {
        "project (chunked)", "native", "floor"}

    table = (tmp_path / "gpu_check.md").read_text()
    assert result["device"] in table and table.count("\n| ") == len(rows) + len(checks) + 2  # 2 header rows
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "gpu_check.png").stat().st_size > 10_000
    else:
        assert "no plot: matplotlib is not installed" in capsys.readouterr().out
