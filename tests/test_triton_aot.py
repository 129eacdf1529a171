"""Every Triton kernel the autotuner may launch, compiled ahead of time for sm_90a and sm_80 on
this machine (no GPU needed): it must compile, keep its registers (no spills) and fit the
target's shared memory. The tests run ``python -m sparsekit.triton_kernels.aot`` in a process
without ``TRITON_INTERPRET`` and print its table of registers and shared memory."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton.backends.nvidia", reason="needs triton with its NVIDIA backend")
from sparsekit.triton_kernels import aot  # noqa: E402


@pytest.mark.parametrize("target", list(aot.TARGETS))
def test_every_kernel_compiles_without_spills(target, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compiled here, not found in a cache
    table = tmp_path / "aot.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparsekit.triton_kernels.aot",
            "--target",
            target,
            "--jobs",
            "1",
            "--json",
            str(table),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    print(run.stdout)
    assert table.exists(), run.stderr[-3000:]
    rows = json.loads(table.read_text())
    assert {r["kernel"] for r in rows} == {v.name for v in aot.variants()}
    for r in rows:
        assert (
            r["spill_bytes"] == 0
            and r["shared_bytes"] <= aot.SHARED_LIMIT[aot.TARGETS[target].arch]
        ), r
    assert run.returncode == 0, run.stderr[-3000:]


def test_every_dtype_and_load_path_has_kernels_for_32_rows():
    """The layout only picks heights some config holds; 32 rows must always be one."""
    for dtype, precisions in aot.PRECISIONS.items():
        for precision in precisions:
            for consecutive in (True, False):
                assert any(
                    (v.dtype, v.precision, v.rows, v.consecutive)
                    == (dtype, precision, 32, consecutive)
                    for v in aot.variants()
                )
