"""Parameters and compute of convolutions, for one layer and for the whole loaded network.

Units, everywhere in this module:
    params  learnable weights (conv kernels, BN gamma/beta, dense weights and biases) -- the
            paper's count. BatchNorm running mean/variance are buffers, counted apart as
            ``bn_statistics`` (Keras adds them to its "total params": 22,855,952 + 54,528 = 22,910,480).
    MACs    multiply-accumulates per image: one multiply and one add. A k x k conv costs
            k^2 * Cin/groups MACs per output value. FLOPs ~= 2 x MACs.
    Counted: Conv2d and Linear multiply-adds. Not counted: biases, BatchNorm (folded into the
            conv at inference), ReLU, pooling, residual adds -- together well under 1% of the MACs.

The separable-vs-standard ratio (MobileNets, Howard et al. 2017, eq. 5) is exact for both params
and MACs of a bias-free conv: (k^2*Cin + Cin*Cout) / (k^2*Cin*Cout) = 1/Cout + 1/k^2.

Modules: ``layer`` (one convolution: the calculator), ``ledger`` (the loaded Xception, layer by layer,
and the paper's numbers), ``networks`` (any network of :mod:`xviz.zoo`), ``speed`` (measured time).
"""

from .layer import (PADDINGS, ConvCost, SeparableCost, compare_layer, depthwise_conv, formulas_latex, group_spectrum,
                    grouped_conv, output_size, pointwise_conv, separable_conv, separable_ratio, standard_conv,
                    valid_groups)
from .ledger import (KINDS, LEDGER_COLUMNS, PAPER, PAPER_FACTS, STANDARD_KIND, PaperFact, Totals, counterfactual,
                     ledger, separable_presets, shares, totals)
from .networks import NETWORK_KINDS, NETWORK_LEDGER_COLUMNS, SHORTCUT_LEAVES, network_kind, network_ledger
from .speed import SpeedComparison, time_standard_vs_separable
