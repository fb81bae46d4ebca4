"""Typed errors. Each message is a sentence a student can act on: what went wrong, what to do."""


class XvizError(Exception):
    """Base class of every error xviz raises on purpose."""


class ImageError(XvizError, ValueError):
    """The bytes given as an image can't be used (empty, truncated, not an image, too large)."""


class WeightsError(XvizError, ValueError):
    """A weights file doesn't fit Xception: wrong format, missing or unexpected keys, wrong shapes."""


class WeightsUnavailableError(XvizError, RuntimeError):
    """Weights that have to be downloaded can't be (offline, hub unreachable, corrupt download)."""


class LabelsError(XvizError, ValueError):
    """A labels file is unreadable or its number of classes doesn't match the model's head."""


class TeachError(XvizError, ValueError):
    """Samples that can't be taught: too few or too many classes or samples, a blank or repeated name."""
