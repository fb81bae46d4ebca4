"""Where is the network looking? Grad-CAM and captum's attribution methods, plus the checks that say
whether a heatmap can be trusted.

Every method has one signature, ``fn(m, x, target=None, *, progress=None, **options) -> (H, W)``
(the layer methods also take ``layer=``), and :func:`attribute` dispatches on a method name. Larger
values mean "more evidence for ``target``"; :data:`METHODS` says which maps can be negative.
:func:`integrated_gradients` returns an :class:`IGResult`: the map (``.map``) and how well it adds up
(``.completeness_error``); :func:`attribute` returns its map like any other.

Attribution on a shared model: captum attaches hooks (forward hooks on the layer, backward hooks
on every ReLU for guided backprop), so every call holds ``m.lock`` for its whole duration, and every
hook is registered in ``try`` and removed in ``finally``. The network stays in eval mode with
``requires_grad=False`` on its parameters: gradients are taken w.r.t. inputs and activations only,
which is all attribution needs, and nothing here changes a parameter's flag.

Trust: :func:`deletion_curve` (remove the most relevant pixels first; a faithful map makes the
score fall faster than random removal) and :func:`randomisation_check` (Adebayo et al., 2018,
"Sanity Checks for Saliency Maps": randomise the top layers of a copy; a faithful map changes),
and for Integrated Gradients its completeness error.

Modules: ``methods`` (Grad-CAM and captum's methods), ``ig`` (Integrated Gradients), ``registry``
(:data:`METHODS`, :func:`attribute`), ``trust`` (the checks).
"""

from .ig import (BLUR_SIGMA, IG_BASELINES, IG_FIRST_STEPS, IG_MAX_STEPS, IG_TOLERANCE, IGResult, ig_baseline,
                 integrated_gradients)
from .methods import (DEFAULT_BATCH, DEFAULT_LAYER, OCCLUSION_BATCH, SMOOTH_NOISE, ProgressFn, as_input,
                      block_outputs, gradcam, gradcam_from_features, gradcam_from_features_batch, guided_gradcam,
                      occlusion, occlusion_window, resolve_target, saliency, smoothgrad, spatial_layers)
from .registry import METHODS, Method, attribute
from .trust import DeletionCurve, RandomisationCheck, cascade_stages, deletion_curve, randomisation_check, spearman
