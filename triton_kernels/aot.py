"""Ahead-of-time compilation of the Triton kernels for GPU targets, on any machine: every
autotune config x row-tile height x dtype x load path, compiled to a cubin (ptxas and cuobjdump
ship with triton), with each cubin's registers, shared memory and spills, and what its SASS says
of its K loop and residency (``sass``): instructions an iteration, MMAs, the async copies' wait
depth, global loads by width, thread blocks per SM.

    python -m sparsekit.triton_kernels.aot     # the table for sm_90a and sm_80 (exit 1 if a
                                               # kernel spills or overflows shared memory)
    python -m sparsekit.triton_kernels.aot --target sm_90a --markdown table.md --json table.json

It needs a process without ``TRITON_INTERPRET=1``, under which triton's own functions are
interpreted ones.

The arguments are specialised as the JIT specialises a launch whose sizes are multiples of 16:
pointers and the strides of images, rows and pixels divisible by 16, a 3x3 kernel with bias and
ReLU; channels_last (channel stride 1, tiles loaded channels first) and NCHW (pixel stride 1)
each (1x1 kernels and the other flags are not compiled separately here).
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import block_conv, sass
from .row_tiles import K_TILE, ROW_TILES

TARGETS = {"sm_90a": GPUTarget("cuda", 90, 32), "sm_80": GPUTarget("cuda", 80, 32)}
# the most shared memory one block may opt in to, per compute capability
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
# dtype -> the input precisions it is compiled with (fp32: strict and TF32)
PRECISIONS = {"fp32": ("ieee", "tf32"), "bf16": ("tf32",), "fp16": ("tf32",)}
POINTERS = ("x", "out", "bias", "weights")
TABLES = ("tile_rows", "tile_ptr", "taps", "channels_of")
# the strides that are 1 (channels contiguous, or pixels) and those divisible by 16, per layout
UNIT = {True: ("sxc", "soc"), False: ("sxw", "sop")}
DIVISIBLE = {True: ("sxn", "sxh", "sxw", "son", "sop"), False: ("sxn", "sxc", "sxh", "son", "soc")}


@dataclass(frozen=True)
class Variant:
    dtype: str
    precision: str
    rows: int
    consecutive: bool
    wide: bool  # int64 offsets inside images
    channels_inner: bool  # channels_last input and output, else NCHW
    config: triton.Config

    @property
    def name(self) -> str:
        c = self.config
        path = "consecutive" if self.consecutive else "gathered"
        return (
            f"{self.dtype}-{self.precision}-rows{self.rows}-{path}-m{c.kwargs['BLOCK_M']}"
            f"-w{c.num_warps}-s{c.num_stages}{'-wide' if self.wide else ''}"
            f"{'' if self.channels_inner else '-nchw'}"
        )


def variants() -> list[Variant]:
    """Every kernel the autotuner may launch: configs that fit the row-tile height."""
    return [
        Variant(dtype, precision, rows, consecutive, wide, channels_inner, config)
        for dtype, precisions in PRECISIONS.items()
        for precision in precisions
        for rows in ROW_TILES
        for consecutive in (True, False)
        for config in block_conv.GPU_CONFIGS
        if block_conv.fits(config, rows, consecutive, precision == "ieee")
        for wide in (False, True)
        if block_conv.serves_wide(config) or not wide
        for channels_inner in (True, False)
    ]


def _source(v: Variant) -> ASTSource:
    fn = block_conv.tile_conv_kernel.fn
    unit, divisible_strides = UNIT[v.channels_inner], DIVISIBLE[v.channels_inner]
    # the WIDE variant serves strides past int32, which the JIT passes as i64
    wide_ints = set(divisible_strides + unit) if v.wide else set()
    constexprs = {
        "KW": 3,
        "WIDE": v.wide,
        "HAS_BIAS": True,
        "RELU": True,
        "CONSECUTIVE": v.consecutive,
        "X_CHANNELS_INNER": v.channels_inner,
        "OUT_CHANNELS_INNER": v.channels_inner,
        "INPUT_PRECISION": v.precision,
        "ROWS": v.rows,
        "K_TILE": K_TILE,
        **v.config.kwargs,
        **{name: 1 for name in unit if not v.wide},
    }
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in POINTERS:
            signature[name] = f"*{v.dtype}"
        elif name in TABLES:
            signature[name] = "*i32"
        else:
            signature[name] = "i64" if name in wide_ints else "i32"
    divisible = set(POINTERS + TABLES + divisible_strides)
    attrs = {
        (i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if name in divisible
    }
    return ASTSource(fn, signature, constexprs, attrs)


def _cuobjdump() -> str:
    import triton.backends.nvidia as nvidia

    return os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")


def cuobjdump(cubin: bytes, flag: str) -> str:
    """What ``cuobjdump flag`` prints of ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [_cuobjdump(), flag, f.name], check=True, capture_output=True, text=True
        ).stdout


def resource_usage(cubin: bytes) -> dict:
    """``{"registers", "local", "static_shared"}`` of the one kernel in ``cubin``, from
    ``cuobjdump --dump-resource-usage``; ``local`` counts the stack frame too, where ptxas puts
    spilled registers (the kernel has no calls or local arrays, so any is a spill)."""
    text = cuobjdump(cubin, "--dump-resource-usage")
    found = dict(re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", text))
    if "REG" not in found:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    return {
        "registers": int(found["REG"]),
        "local": int(found.get("LOCAL", 0)) + int(found.get("STACK", 0)),
        "static_shared": int(found.get("SHARED", 0)),
    }


def compile_variant(target: str, v: Variant) -> dict:
    """Compiles ``v`` for ``target`` (a key of ``TARGETS``); its resources and whether they fit."""
    gpu = TARGETS[target]
    kernel = triton.compile(
        _source(v),
        target=gpu,
        options={"num_warps": v.config.num_warps, "num_stages": v.config.num_stages},
    )
    usage = resource_usage(kernel.asm["cubin"])
    shared = kernel.metadata.shared + usage["static_shared"]
    return {
        "target": target,
        "kernel": v.name,
        "registers": usage["registers"],
        "spill_bytes": usage["local"],
        "shared_bytes": shared,
        "fits": usage["local"] == 0 and shared <= SHARED_LIMIT[gpu.arch],
        **sass.loop_report(cuobjdump(kernel.asm["cubin"], "-sass")),
        "ctas_per_sm": sass.ctas_per_sm(usage["registers"], v.config.num_warps, shared, gpu.arch),
    }


def _compile_job(job) -> dict:
    return compile_variant(*job)


COLUMNS = (
    ("target", "target"),
    ("kernel", "kernel"),
    ("registers", "regs"),
    ("spill_bytes", "spill B"),
    ("shared_bytes", "shared B"),
    ("ctas_per_sm", "CTAs/SM"),
    ("loop_instructions", "K-loop instrs"),
    ("mma", "MMAs"),
    ("ffma", "FFMAs"),
    ("wait_depth", "copy wait depth"),
    ("global_loads", "global loads (bits: count)"),
)


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if isinstance(value, dict):
        return " ".join(f"{bits}:{count}" for bits, count in value.items())
    return "-" if value is None else str(value)


def markdown(rows: list[dict], command: str) -> str:
    """The rows as a markdown table, under a line naming the compiler and ``command``."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [
        f"Triton kernels compiled ahead of time with triton {triton.__version__}, K loop read from "
        f"the SASS (`sparsekit/triton_kernels/sass.py`); `{command}`",
        "",
        head,
        "| --- " * len(COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cell(r, key) for key, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparsekit.triton_kernels.aot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--target", action="append", choices=list(TARGETS), help="default: all")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="compiler processes")
    parser.add_argument(
        "--json", help="also write the rows to this file (with the compiler's version)"
    )
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 makes triton's own functions uncompilable: unset it")
    jobs = [(t, v) for t in args.target or TARGETS for v in variants()]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(_compile_job, jobs))
    command = " ".join(["python -m sparsekit.triton_kernels.aot", *(argv or sys.argv[1:])])
    print(markdown(rows, command))
    for r in rows:
        if not r["fits"]:
            print(f"DOES NOT FIT: {r['target']} {r['kernel']}")
    if args.json:
        environment = {
            "triton": triton.__version__,
            "date": datetime.date.today().isoformat(),
            "command": command,
        }
        with open(args.json, "w") as f:
            json.dump({"environment": environment, "results": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, command))
    return 0 if all(r["fits"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
