"""Separable convolution, opened up: depthwise (one 3×3 filter per channel), then pointwise (mixing)."""

import streamlit as st

from xviz import flows, ui

ui.page_header("Anatomy of a separable convolution",
               "Xception replaces every big convolution by two small steps. **Depthwise:** each input "
               "channel gets its own 3×3 filter, and channels never mix. **Pointwise:** a 1×1 "
               "convolution mixes the filtered channels, each output a weighted sum of all of them. "
               "Here is one of its 34 separable convolutions, on your image.")
sel = ui.current()
seps = {s.name: s for s in flows.separable_convs(sel.model.net)}
name = st.selectbox("Separable convolution", list(seps), index=list(seps).index("block5_sepconv1"),
                    key="sep_name", format_func=lambda n: f"{n}  ·  {flows.FLOW_TITLES[seps[n].flow]}")
ui.view_separable(sel, name)
