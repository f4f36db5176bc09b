"""The promise every physical rebuild keeps: the rebuilt model computes what the masked model computes.

A model the engine accepts but cannot rebuild faithfully (an operation Torch-Pruning does not trace, a layer
used twice, a unit whose removal changes the output) is refused here, by name, instead of being measured.

>>> import torch
>>> from torch import nn
>>> a = nn.Linear(4, 2)
>>> check_rebuild(a, a, torch.randn(3, 4), "Linear")
0.0
>>> check_rebuild(a, nn.Linear(4, 3), torch.randn(3, 4), "Linear")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
prunesweep.pruning.verify.RebuildMismatch: refusing to rebuild Linear: the rebuilt model returns shape (3, 3), ...
"""

from __future__ import annotations

import torch
from torch import nn

from prunesweep.pruning._util import eval_mode, model_device

#: Largest max-abs output difference a rebuild may show (float32 sums in another order differ by ~1e-6).
REBUILD_TOLERANCE = 1e-4


class RebuildMismatch(RuntimeError):
    """The rebuilt model does not compute what the masked model computes."""


def check_rebuild(masked: nn.Module, rebuilt: nn.Module, example: torch.Tensor, name: str) -> float:
    """Max abs output difference of ``rebuilt`` vs ``masked`` on ``example``; raises past the tolerance."""
    with eval_mode(masked), eval_mode(rebuilt), torch.inference_mode():
        expected = masked(example.to(model_device(masked)))
        got = rebuilt(example.to(model_device(rebuilt)))
    if got.shape != expected.shape:
        raise RebuildMismatch(
            f"refusing to rebuild {name}: the rebuilt model returns shape {tuple(got.shape)}, "
            f"the masked one {tuple(expected.shape)}"
        )
    diff = float((got.to(expected.device) - expected).abs().max())
    if not diff <= REBUILD_TOLERANCE:  # also catches NaN
        raise RebuildMismatch(
            f"refusing to rebuild {name}: its rebuilt outputs differ from the masked model's by {diff:.3g} (max abs, "
            f"tolerance {REBUILD_TOLERANCE:g}); Torch-Pruning's graph misses a coupling of this model. Use "
            "pruning.granularity=unstructured, or declare channel_layers/structures on the model"
        )
    return diff
