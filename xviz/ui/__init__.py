"""The Streamlit glue: the only part of xviz that imports Streamlit, imported by ``app.py`` and
``pages/*`` only (``from xviz import ui``, then ``ui.current()``, ``ui.view_separable(...)``).

One concern a module; what the pages call is re-exported here, so a page reads ``ui.current()``.
The modules:

- ``state``: session keys, the ``Selection`` every page works on, the sidebar's model
  (``current`` / ``required_model``), the deep-link hand-over (``ensure_frame``, ``page_header``).
- ``sidebar``: the shared sidebar (image, model, input size) and the provenance status line.
- ``cache``: every ``st.cache_*`` (models, predictions, tables, the feature-map capture) and the
  process-wide store of attribution results.
- ``drawn``: figures, encoded pictures and tables drawn once per content, shared by every session.
- ``presenter``: presenter mode for projectors (colour scales, larger type).
- ``views/``: what the pages draw, by subject (predict, flows, separable, attribution).
- ``teach``: the teaching page's samples (session memory only), embeddings and taught model.
- ``legacy_pages``: the one workaround that touches a private Streamlit class.
- ``waiting``: requests to the model go through the inference queue (:mod:`xviz.inference`); while
  one waits, the student sees their place in line.
- ``background``: work that is the same for every student (the Across architectures page's counts),
  done once per server process in a background thread; a page that needs it first shows its progress.

Importing this package freezes the heap built by the imports (``gc.freeze``): torch, plotly, pandas
and Streamlit leave ~260k long-lived objects that every full garbage collection would walk again
(2 s on a loaded 2-core machine, holding the GIL while every session waits). With Streamlit's own
collection after each run switched off (``[runner] postScriptGC = false``), Python's automatic
collections still reclaim cycles, but only among objects made since: memory stays bounded (bench/soak.py).
"""

import gc

# The core imports pandas lazily (xviz.accounting, xviz.across) so `import xviz` stays light. Thirty
# sessions opening a table page at once then imported it for the first time in several script
# threads, and one got "partially initialized module 'pandas' has no attribute 'Series'"
# (bench/load_test.py --all-pages): the app imports it here, once, before any page runs.
import pandas  # noqa: F401

from xviz.figures import toolkit as _toolkit

# Colour tables come from matplotlib, imported on first use: ~0.3 s with the GIL held, which the first
# of thirty students opening Feature maps at once made everyone wait for. Drawn here, at server start.
for _cmap in (*_toolkit.COLORMAPS, _toolkit.SIGNED_COLORMAP):
    _toolkit.lut(_cmap)

# what pages/* and app.py call
from xviz.ui.cache import (architecture, configure_torch, flow_capture, layer_summary, layer_table, ledger,
                           predictions, start_background_work, start_prediction, tour_facts, zoo_counts,
                           zoo_latency)
from xviz.ui.drawn import drawn, drawn_table
from xviz.ui.presenter import colormap, presenter
from xviz.ui.sidebar import camera_blocked, example_images, sidebar
from xviz.ui.state import (GOTO_BLOCK, PAGES, TOUR_REVEALED, Selection, current, ensure_frame, page_header,
                           required_model, safe_display)
from xviz.ui.views.attribution import (attribution_options, pick_attribution_target, view_attribution,
                                       view_attribution_trust)
from xviz.ui.views.flows import view_channel_grid, view_layer_numbers, view_residual, view_size_strip
from xviz.ui.views.predict import view_input, view_predictions
from xviz.ui.views.separable import view_separable

gc.freeze()  # once per process (an import runs once); see the module docstring
