"""Inside the flows: what one forward pass records for the feature-map, separable-convolution and
architecture views, and the arithmetic those views show.

The capture plan
    :func:`capture_views` runs ONE hooked forward pass and keeps, for display, every layer the views
    need; picking another layer, channel or sort order afterwards never reruns the network. Kept
    ("stored") per image:

    * ``block1_conv1_act``, ``block1_conv2_act`` (the stem),
    * the depthwise output (``blockN_sepconvK_depthwise``) and the pointwise output
      (``blockN_sepconvK``) of all 34 separable convolutions,
    * ``blockN_pool``, ``blockN_residual_bn`` and ``blockN_add`` of every residual block.

    Every other layer the views show is *derived* exactly as the network computes it, on demand and
    without the network: ``blockN_sepconvK_bn`` is a per-channel affine map of the stored pointwise
    output (BatchNorm in inference mode), and ``..._act`` is ReLU of the layer before it. Storing
    the BN and ReLU outputs as well would cost ~40% more memory for no new information.

    Maps are stored as **float16** (2 bytes a value): enough for pictures and statistics (about
    3 significant digits), and it keeps a 299-px image at ~82 MB (see :attr:`FlowCapture.nbytes`).
    Checks that compare stored numbers (pointwise reconstruction, residual sum) therefore use a
    tolerance that follows from float16 rounding; pass ``dtype=np.float32`` for exact numbers.

Structure
    :func:`view_plan` reads the network's units (:meth:`xviz.model.Xception.units`) and lists, in
    forward order, each shown layer with its flow, block and kind; :func:`layer_table` adds the
    shapes at a given input size by a shape-only forward pass; :func:`architecture` sums up each
    block (input/output shape, parameters, residual type).
"""

from .capture import (STORE_DTYPE, FlowCapture, LayerStats, SORTS, capture_views, capture_views_batch, channel_order,
                      layer_stats)
from .checks import (BatchNormParams, Contributions, ResidualView, SeparableAnatomy, depthwise_check,
                     pointwise_contributions, residual_view, separable_anatomy)
from .structure import (FLOW_TITLES, KIND_TEXT, BlockSummary, LayerInfo, PlanEntry, SeparableInfo, architecture,
                        block_names, layer_table, separable_convs, size_stages, stored_names, view_plan)
