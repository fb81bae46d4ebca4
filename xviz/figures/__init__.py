"""Pure figure builders: arrays and tables in, plotly figures or images out. No Streamlit here.

Every picture is coloured, resized, blended and encoded by :mod:`xviz.figures.toolkit`.
"""

from .predict import topk_bar  # noqa: F401
from .ledger import group_spectrum_plot, shares_bar, standard_vs_separable_bar  # noqa: F401
from .architectures import accuracy_vs_compute, blocks_side_by_side, kind_shares, latency_bars  # noqa: F401
from .maps import architecture_diagram, channel_figure, channel_grid, size_strip  # noqa: F401
from .attribution import deletion_figure, heatmap_image, heatmap_overlay, png_filename, randomisation_figure, side_by_side  # noqa: F401,E501
from .toolkit import COLORMAPS, colorize, jpeg_bytes, overlay, png_bytes  # noqa: F401
