"""The backend registry: every way of running the packed ops, and the one ``auto`` policy.

One module per backend (``cpu`` and ``cuda``: the C++ kernels of ``extension``;
``torch_blocks``: blocks as torch's dense conv / linear; ``grouped``: all blocks as one grouped
conv / batched GEMM of torch's; ``triton``: Triton kernels;
``reference``: plain torch, the definition) defines a ``Backend`` (``base``): its devices,
dtypes, ``unavailable(device)`` with the reason, ``supports(pack)``, ``prepack(pack)``, its own
layout of a pack (layers hold it as state, never save it), ``cost(pack)``, its cost model (or
none), and its two ops, each defined from the one schema in ``schema``.
``REGISTRY`` below lists them in the order ``auto`` prefers; adding a backend is its module and
one line there. ``ops``, ``nn``, ``compile``, the CLI, the tests and the
bench suites ask this module which backends exist and which may run what.

``auto`` picks, for tensors of a device and dtype (and a pack), the available backends that take
them and that have passed their tests on real hardware of that device type (``auto_on``): ops
run the first, ``compile`` times them all.
"""

import torch

from ..errors import SparsekitError
from . import cpu, cuda, grouped, reference, torch_blocks, triton
from .base import Backend

REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        cpu.BACKEND,
        torch_blocks.BACKEND,
        triton.BACKEND,
        cuda.BACKEND,
        grouped.BACKEND,
        reference.BACKEND,
    )
}


def names() -> tuple[str, ...]:
    """Every backend's name, in the order ``auto`` prefers."""
    return tuple(REGISTRY)


def choices() -> tuple[str, ...]:
    """Every value a ``backend`` argument of ``compile`` and of the layers takes: ``"auto"``,
    ``"dense"`` (no pack) and the backends' names."""
    return ("auto", "dense", *REGISTRY)


def check_choice(name: str) -> str:
    """``name``, if it is one of ``choices()`` (SparsekitError listing them otherwise)."""
    if name not in choices():
        raise SparsekitError(f"backend: {name!r} is not one of {', '.join(choices())}")
    return name


def get(name: str) -> Backend:
    """The backend called ``name`` (SparsekitError listing the names otherwise)."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise SparsekitError(f"backend: {name!r} is not one of {', '.join(REGISTRY)}") from None


def register(backend: Backend) -> None:
    """Adds ``backend`` to the registry, after the others (a name may be registered once)."""
    if backend.name in REGISTRY or backend.name in ("auto", "dense"):
        raise SparsekitError(f"backend: the name {backend.name!r} is taken")
    REGISTRY[backend.name] = backend


def unregister(name: str) -> None:
    """Removes the backend called ``name`` (SparsekitError if there is none)."""
    del REGISTRY[get(name).name]


def auto(device: torch.device, dtype: torch.dtype, packed=None) -> list[Backend]:
    """The backends ``auto`` may use on ``dtype`` tensors of ``device`` (and for ``packed``), in
    the registry's order: available, taking the dtype, supporting the pack, and tested on real
    hardware of the device's type."""
    return [
        b
        for b in REGISTRY.values()
        if device.type in b.auto_on and b.problem(device, dtype, packed) is None
    ]


def resolve(name: str, device: torch.device, dtype: torch.dtype, packed=None) -> Backend:
    """The backend that runs ``packed`` on ``dtype`` tensors of ``device`` when ``name`` is asked
    for (``"auto"``: the first of ``auto``); SparsekitError saying why when none can."""
    if name == "auto":
        found = auto(device, dtype, packed)
        if not found:
            raise SparsekitError(
                f"backend 'auto': no backend tested on {device.type} runs "
                f"{str(dtype).removeprefix('torch.')} tensors of this pack; name one of "
                f"{', '.join(REGISTRY)} to run an untested one"
            )
        return found[0]
    backend = get(name)
    reason = backend.problem(device, dtype, packed)
    if reason is not None:
        raise SparsekitError(f"backend {name!r} {reason}")
    return backend
