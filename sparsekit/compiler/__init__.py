"""compile(model, mask, example_inputs): the pipeline that turns a masked model into one of
sparse layers, one module per stage, in the order the data goes through them:

1. ``reference``: the dense masked model, what the result must compute (a copy with prune hooks
   and parametrizations made permanent and every mask applied);
2. ``batchnorm``: each conv's BatchNorm folded into its weight and bias: the layers to pack;
   ``compaction`` (with example inputs): the BN-folded model's dataflow compacted, pruned
   channels removed (``channel_states`` says what each channel is): its layers are narrow;
3. ``recording``: the input each layer receives on the example inputs;
4. ``choice``: per layer, dense or a packed plan on a backend, checked and chosen by measured
   latency: a plain value (``LayerChoice``);
5. ``building``: the sparse modules built from those choices, put in place;
6. ``verification``: the result against the reference, layer by layer and end to end.

``pipeline`` runs them: ``compile``, and ``compile_choices`` for choices made elsewhere (SPDY's
timing tables).
"""

from .choice import LayerChoice
from .pipeline import compile, compile_choices
from .verification import Report, verify

__all__ = ["LayerChoice", "Report", "compile", "compile_choices", "verify"]
