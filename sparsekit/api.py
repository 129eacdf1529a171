"""compile(model, mask): a new model whose masked Conv2d / Linear layers run packed blocks,
built by ``compile.build`` and checked by ``verify``."""

import warnings

from torch import nn

from .compile import as_input_tuple, build
from .verify import verify as verify_model


def compile(  # noqa: A001 - the package's verb, as in torch.compile
    model: nn.Module,
    mask=None,
    example_inputs=None,
    *,
    structure: str = "auto",
    backend: str = "auto",
    inplace: bool = False,
    verify: bool = True,
    fold_bn: bool = True,
    measure: bool = True,
    progress: bool = False,
) -> nn.Module:
    """A new module computing the dense masked model's eval forward with sparse layers.

    ``mask``: see ``masks.collect_masks`` (``None``: the model's live prune masks, else the zeros
    in its weights). ``example_inputs``: a tensor or tuple of positional inputs; with them the
    plan of every layer (dense, or a packed ``structure`` on a ``backend``) is chosen by measured
    latency (``measure=True``) and ``verify=True`` checks the result and attaches the report as
    ``compiled.sparsekit_report``, raising ``SparsekitError`` on a mismatch. Without them plans
    follow the cost model and nothing is verified (a warning says so). ``inplace=True`` modifies
    ``model`` itself instead of a copy; ``progress=True`` shows a progress bar over the layers.
    """
    inputs = as_input_tuple(example_inputs)
    checked = verify and bool(inputs)
    compiled, reference = build(
        model, mask, inputs, structure=structure, backend=backend, inplace=inplace,
        fold_bn=fold_bn, measure=measure, progress=progress, keep_reference=checked,
    )
    if checked:
        report = verify_model(compiled, reference, inputs, measure=measure)
        compiled.sparsekit_report = report
        report.raise_on_mismatch()
    elif verify:
        warnings.warn(
            "sparsekit.compile: no example_inputs, so plans follow the cost model and the "
            "compiled model was not verified",
            stacklevel=2,
        )
    return compiled
