"""xviz: see how Xception sees an image. The core never imports Streamlit; use it from a notebook.

>>> import xviz
>>> m = xviz.load_model("kitchenware")
>>> img = xviz.load_image(open("photo.jpg", "rb").read())
>>> m.predict(img, k=3)
>>> taught = xviz.teach(m, {"mug": [img, ...], "bottle": [...]})   # new classes on the same backbone
"""

__version__ = "0.1.0"

from . import inference  # noqa: F401  (the queue: xviz.inference.InferenceQueue, backend())
from . import zoo  # noqa: F401  (xviz.zoo: the architectures compared with Xception)
from .activations import activations, capture
from .attributions import gradcam  # noqa: F401  (the other methods: xviz.attributions)
from .errors import ImageError, LabelsError, TeachError, WeightsError, WeightsUnavailableError, XvizError
from .images import load_image
from .loaded import LoadedModel, imagenet_labels, load_file, load_model
from .model import Xception, XceptionConfig, count_parameters
from .preprocess import Preprocessing, to_display
from .teaching import teach
from .weights import save_weights

__all__ = [
    "activations", "capture", "ImageError", "LabelsError", "TeachError", "teach", "WeightsError", "WeightsUnavailableError",
    "XvizError", "load_image", "LoadedModel", "imagenet_labels", "load_file", "load_model", "Xception",
    "XceptionConfig", "count_parameters", "Preprocessing", "to_display", "save_weights",
]
