"""compile(model, mask, example_inputs): the pipeline that turns a masked model into one of
sparse layers, one module per stage, in the order the data goes through them:

1. ``reference``: the dense masked model, what the result must compute (``attention``: MHA rebuilt)
2. ``batchnorm``: each conv's BatchNorm folded into its weight and bias: the layers to pack
3. ``compaction``: pruned channels taken out of the dataflow (``channel_states``: the analysis)
4. ``recording``: the input each layer receives on the example inputs
5. ``choice``: per layer, dense or a packed plan on a backend, checked and chosen: ``LayerChoice``
6. ``building``: the sparse modules built from those choices, put in place
7. ``verification``: the result against the reference, layer by layer and end to end

``pipeline`` runs them: ``compile``, and ``compile_choices`` for choices made elsewhere (SPDY's
timing tables). Stage 3 runs with ``compact_channels`` (the default) and example inputs, on the
BN-folded model; where torch.fx cannot trace and run the model, or no channel goes, the model
keeps its own structure.
"""

from .choice import LayerChoice
from .pipeline import compile, compile_choices
from .verification import Report, verify

__all__ = ["LayerChoice", "Report", "compile", "compile_choices", "verify"]
