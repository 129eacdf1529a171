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
from sparsekit.triton_kernels import aot, sass  # noqa: E402


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
    rows = json.loads(table.read_text())["results"]
    assert {r["kernel"] for r in rows} == {v.name for v in aot.variants()}
    mma = {"sm_90a": "HGMMA", "sm_80": "HMMA"}[target]
    for r in rows:
        assert (
            r["spill_bytes"] == 0
            and r["shared_bytes"] <= aot.SHARED_LIMIT[aot.TARGETS[target].arch]
        ), r
        # the SASS reading found each kernel's K loop and its product's arithmetic
        assert r["loop_instructions"] > 0 and r["ctas_per_sm"] >= 1, r
        if "-ieee-" in r["kernel"]:  # strict fp32: FMA units, no tensor core
            assert r["mma"] == 0 and r["ffma"] > 0, r
        else:
            assert r["mma"] > 0 and r["mma_opcode"].startswith(mma), r
        assert sum(r["global_loads"].values()) > 0, r
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


SASS = """
        /*0100*/                   MOV R1, c[0x0][0x28] ;
        /*0110*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0120*/                   LDGSTS.E.BYPASS.128 [R33], desc[UR18][R26.64], !P4 ;
        /*0130*/                   LDGDEPBAR ;
        /*0140*/                   DEPBAR.LE SB0, 0x1 ;
        /*0150*/                   LDG.E.U16 R8, desc[UR4][R6.64] ;
        /*0160*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR4].tnspA.tnspB, R24 ;
        /*0170*/               @P1 BRA 0x120 ;
        /*0180*/                   FFMA R9, R9, R9, R9 ;
        /*0190*/               @P2 BRA 0x100 ;
        /*01a0*/                   EXIT ;
"""


def test_the_k_loop_is_the_innermost_loop_with_the_products_arithmetic():
    # two loops hold an MMA: the outer one (0x100-0x190) and the inner one (0x120-0x170)
    assert sass.k_loop(SASS)[0].startswith("LDGSTS") and len(sass.k_loop(SASS)) == 6
    assert sass.loop_report(SASS) == {
        "loop_instructions": 6,
        "mma": 1,
        "mma_opcode": "HGMMA.64x32x16.F32.BF16",
        "ffma": 0,
        "wait_depth": 1,
        "global_loads": {128: 1, 16: 1},
    }
    assert sass.loop_report(SASS.replace("HGMMA", "IMAD").replace("FFMA", "IADD3")) == {
        "loop_instructions": None
    }
    assert [sass.load_width(o) for o in ("LDG.E", "LDG.E.64", "LDG.E.S8", "LDGSTS.E.128")] == [
        32,
        64,
        8,
        128,
    ]


def test_ctas_per_sm_take_the_scarcest_resource():
    # 64 registers x 4 warps: 8 blocks by registers, 16 by warp slots; 40 KB shared: 5 by memory
    assert sass.ctas_per_sm(64, 4, 40 * 1024, 90) == 5
    assert sass.ctas_per_sm(64, 4, 0, 90) == 8
    assert sass.ctas_per_sm(255, 8, 0, 90) == 1  # 255 registers round up to 256 a thread
    assert sass.ctas_per_sm(16, 1, 0, 90) == 32  # the block slots
