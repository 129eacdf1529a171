"""What a compiled kernel's SASS (``cuobjdump -sass``) says of its inner loop and its residency,
read without a GPU.

``k_loop(sass)`` finds the K loop: the innermost loop (a backward branch and the instructions
from its target to it) that holds the product's arithmetic (HGMMA on sm_90a, HMMA on sm_80, FFMA
in strict fp32). Of it, it reports what bounds a K-tile's time: its instructions (each thread
issues each once an iteration), the MMAs, how deep the async copies are waited for (``DEPBAR.LE
SB0, N``: the loop waits until at most N copy groups are in flight, so N = 0 means the copies of
one tile are waited for before its MMAs, a pipeline of one stage), and the global loads by width
in bits (128: 16-byte vectors). ``ctas_per_sm`` gives how many thread blocks of a kernel's
registers, warps and shared memory one SM holds at once.
"""

import math
import re

# "/*1540*/   LDGSTS.E.BYPASS.128 [R33], desc[UR18][R26.64], !P4 ;"
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.+?)\s*;")
_BRANCH = re.compile(r"\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)")
_ARITHMETIC = ("HGMMA", "HMMA", "FFMA")
_WAIT = re.compile(r"\bDEPBAR\.LE\s+SB0,\s*0x([0-9a-f]+)")

REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256  # registers are given to a warp in units of this many
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
SHARED_PER_SM = {90: 228 * 1024, 80: 164 * 1024}
SHARED_RESERVED_PER_CTA = 1024  # what the system keeps of shared memory for each block


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, instruction) of every instruction, predicate included, in order."""
    return [(int(a, 16), text) for a, text in _LINE.findall(sass)]


def _opcode(text: str) -> str:
    words = text.split()
    return words[1] if words[0].startswith("@") and len(words) > 1 else words[0]


def k_loop(sass: str) -> list[str] | None:
    """The instructions of the innermost loop that holds the product's arithmetic (None: no
    such loop)."""
    code = instructions(sass)
    index = {address: i for i, (address, _) in enumerate(code)}
    loops = []
    for i, (address, text) in enumerate(code):
        found = _BRANCH.search(text)
        if found and int(found.group(1), 16) <= address and int(found.group(1), 16) in index:
            body = [t for _, t in code[index[int(found.group(1), 16)] : i + 1]]
            if any(_opcode(t).startswith(_ARITHMETIC) for t in body):
                loops.append(body)
    return min(loops, key=len) if loops else None


def load_width(opcode: str) -> int:
    """Bits per thread of a global load (LDG) or async copy (LDGSTS) opcode: its size modifier
    (``.128``, ``.64``, ``.U16`` ...), 32 without one."""
    modifiers = set(opcode.split(".")[1:])
    for names, bits in ((("128",), 128), (("64",), 64), (("U16", "S16"), 16), (("U8", "S8"), 8)):
        if modifiers & set(names):
            return bits
    return 32


def loop_report(sass: str) -> dict:
    """Of the K loop (``k_loop``): ``loop_instructions``, ``mma`` (HGMMA / HMMA instructions)
    and their opcode, ``ffma``, ``wait_depth`` (the least N of its ``DEPBAR.LE SB0, N``, None if
    it waits for no async copy) and ``global_loads``: width in bits -> count."""
    body = k_loop(sass)
    if body is None:
        return {"loop_instructions": None}
    opcodes = [_opcode(t) for t in body]
    mma = [o for o in opcodes if o.startswith(("HGMMA", "HMMA"))]
    waits = [int(m.group(1), 16) for t in body for m in [_WAIT.search(t)] if m]
    loads: dict[int, int] = {}
    for o in opcodes:
        if o.split(".")[0] in ("LDG", "LDGSTS"):  # not LDGDEPBAR, which only marks a group
            loads[load_width(o)] = loads.get(load_width(o), 0) + 1
    return {
        "loop_instructions": len(body),
        "mma": len(mma),
        "mma_opcode": mma[0] if mma else None,
        "ffma": sum(o.startswith("FFMA") for o in opcodes),
        "wait_depth": min(waits) if waits else None,
        "global_loads": dict(sorted(loads.items(), reverse=True)),
    }


def ctas_per_sm(registers: int, warps: int, shared_bytes: int, arch: int) -> int:
    """Thread blocks one SM holds at once: the least of what its registers, warp slots, shared
    memory and block slots allow."""
    per_warp = math.ceil(registers * 32 / REGISTER_UNIT) * REGISTER_UNIT
    by_registers = REGISTERS_PER_SM // (per_warp * warps)
    by_shared = SHARED_PER_SM[arch] // (shared_bytes + SHARED_RESERVED_PER_CTA)
    return min(by_registers, MAX_WARPS_PER_SM // warps, by_shared, MAX_CTAS_PER_SM)
