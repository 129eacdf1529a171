"""Stage 4 of compile: running a model while recording what its layers see, the inputs compile
checks and times plans on and the inputs and outputs verify compares layer by layer."""

import torch
from torch import nn

from ..errors import SparsekitError


def as_input_tuple(example_inputs) -> tuple:
    """``example_inputs`` (None, a tensor, or a tuple / list of positional inputs) as a tuple."""
    if example_inputs is None:
        return ()
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise SparsekitError(
        f"example_inputs: expected a tensor or a tuple of them, got {type(example_inputs).__name__}"
    )


def record_inputs(model: nn.Module, names: list[str], inputs: tuple) -> dict[str, torch.Tensor]:
    """The first input each named layer receives when ``model`` runs on ``inputs``."""
    return run_recording(model, inputs, names, outputs=False)[0]


def run_recording(model, inputs, names, outputs: bool):
    """Runs ``model(*inputs)``, recording the named layers' first inputs (and outputs); an error
    names the layer it happened in. Returns (inputs, outputs, the model's result)."""
    seen_in, seen_out, current = {}, {}, [None]
    handles = []
    for name, module in model.named_modules():
        if name and not any(module.children()):

            def enter(mod, args, name=name):
                current[0] = name

            handles.append(module.register_forward_pre_hook(enter))
    for name in names:
        module = model.get_submodule(name)

        def pre(mod, args, name=name):
            if args and isinstance(args[0], torch.Tensor):
                seen_in.setdefault(name, args[0].detach())

        def post(mod, args, result, name=name):
            if isinstance(result, torch.Tensor):
                seen_out.setdefault(name, result.detach().clone())

        handles.append(module.register_forward_pre_hook(pre))
        if outputs:
            handles.append(module.register_forward_hook(post))
    try:
        with torch.inference_mode():
            result = model(*inputs)
    except Exception as error:  # noqa: BLE001 - reported with the layer it happened in
        where = f" in layer {current[0]!r}" if current[0] else ""
        raise SparsekitError(f"example_inputs: the model failed{where}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
    return seen_in, seen_out, result
