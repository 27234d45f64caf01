"""Fused trials: K configurations of one model trained as one stacked model.

A sweep of small models (the paper's section 5.1 grid: nine BinaryNets that differ
only in Bop's threshold and gamma) leaves a GPU, or a CPU's vector units, mostly idle
when each configuration trains in its own process, and pays every per-trial cost K
times. Here the K members' parameters are stacked along their first dimension (HFTA's
"horizontal fusion", Wang et al., MLSys 2021) and trained by one loop:

* :mod:`~bopsweep.bnn.fused.layers`: :func:`fuse_models` turns K identically shaped
  models into one whose convolutions are grouped convolutions over the members'
  channels, whose dense layers are batched matmuls and whose BatchNorms normalise
  every member's channels separately; pooling and activations act per channel
  already. Member ``k`` of every fused tensor is its ``k``-th slice along dim 0, so a
  member's state dict is a view of the fused one.
* :mod:`~bopsweep.bnn.fused.optim`: Bop and Bop2ndOrder with each member's own
  threshold, gamma and sigma in one pass over all members (bit-identical to K
  separate steps), and the full-precision optimizers with each member's own learning
  rate.
"""

from bopsweep.bnn.fused.layers import (
    FusedModel,
    fuse_models,
    member_cross_entropy,
    member_state_dict,
    member_view,
)
from bopsweep.bnn.fused.optim import (
    FusedBop,
    FusedCaseOptimizer,
    MemberOptimizers,
    SharedOptimizer,
)

__all__ = [
    "FusedBop",
    "FusedCaseOptimizer",
    "FusedModel",
    "MemberOptimizers",
    "SharedOptimizer",
    "fuse_models",
    "member_cross_entropy",
    "member_state_dict",
    "member_view",
]
