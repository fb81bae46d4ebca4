"""One separable convolution taken apart on the current image (pages/separable.py and the tour)."""

from __future__ import annotations

import streamlit as st

from xviz.ui.cache import flow_capture
from xviz.ui.presenter import colormap, presenter
from xviz.ui.state import Selection
from xviz.ui.views.flows import grid_width


def view_separable(sel: Selection, name: str, *, key: str = "sep", controls: bool = True, bn: bool = True,
                   heading=None) -> None:
    """Separable conv ``name`` opened up on the current image: depthwise, pointwise (its sum checked)
    and, with ``bn``, batch normalisation and ReLU. ``heading`` draws the section titles (st.header).

    Without ``controls``: 12 input channels (8 in presenter mode), channel 0 checked, the output
    channel with the highest mean taken apart into its 6 largest contributions.
    """
    from xviz import flows

    heading = heading or st.header
    cap = flow_capture(sel)
    anat = flows.separable_anatomy(sel.model, cap, name)
    (h, w) = anat.pointwise.shape[1:]
    st.caption(f"Reads `{anat.info.input}` ({h}×{w}×{anat.in_channels}) and writes {h}×{w}×{anat.out_channels}. "
               "Maps are stored as float16 for display; the checks below allow for that rounding.")
    downloads = controls and not presenter()
    heading("1 · Depthwise: one 3×3 filter per input channel")
    _depthwise(anat, name, key=key, controls=controls, downloads=downloads)
    heading("2 · Pointwise: every output mixes all depthwise maps")
    o, con = _pointwise(anat, name, key=key, controls=controls, downloads=downloads)
    if bn:
        heading("3 · Batch normalisation, then ReLU")
        _batchnorm(anat, cap, o, con)


def _depthwise(anat, name: str, *, key: str, controls: bool, downloads: bool) -> None:
    """Input channels, their 3x3 kernels and the depthwise maps side by side; one map recomputed."""
    import numpy as np

    from xviz import flows
    from xviz.figures import maps as M
    from xviz.figures import toolkit as T

    cin, cmap = anat.in_channels, colormap("maps")
    st.latex(r"D_c = K_c \ast X_c \qquad c = 1,\dots," + str(cin))
    n = min(cin, 8 if presenter() else 12)
    if controls:
        n = st.slider("Input channels shown", 1, min(cin, 64), n, key=f"{key}_n")
    cols = st.columns([2, 1, 2])
    grid_in, pal_in, _ = M.channel_grid_indexed(anat.inputs[:n], cmap=cmap, max_width=400, min_tile=56)
    grid_k, pal_k, _ = M.channel_grid_indexed(anat.kernels[:n], normalise="shared", cmap="RdBu_r", max_width=200,
                                              vrange=M.symmetric_range(anat.kernels[:n]), min_tile=30,
                                              gap_colour=200)
    grid_dw, pal_dw, _ = M.channel_grid_indexed(anat.depthwise[:n], cmap=cmap, max_width=400, min_tile=56)
    grid_in, grid_k, grid_dw = (T.png_bytes(grid_in, palette=pal_in), T.png_bytes(grid_k, palette=pal_k),
                                T.png_bytes(grid_dw, palette=pal_dw))
    cols[0].image(grid_in, output_format="PNG", caption=f"input channels 0–{n - 1} ({anat.info.input})")
    cols[1].image(grid_k, output_format="PNG", caption="their 3×3 kernels (blue −, red +)")
    cols[2].image(grid_dw, output_format="PNG", caption=f"depthwise maps 0–{n - 1}: same order, same count")
    c = st.number_input("Check one channel", 0, cin - 1, 0, key=f"{key}_dw_channel") if controls else 0
    err = flows.depthwise_check(anat, c)
    st.caption(f"Depthwise map {c} recomputed from input channel {c} and kernel {c} **alone**: max difference "
               f"{err:.2g} (values up to {np.abs(anat.depthwise[c]).max():.3g}). {cin} input channels give "
               f"exactly {anat.depthwise.shape[0]} depthwise maps, using {cin * 9:,} weights.")
    if downloads:
        for col, (img, label) in zip(st.columns(3), [(grid_in, "inputs"), (grid_k, "kernels"),
                                                     (grid_dw, "depthwise")]):
            col.download_button(f"Download {label} (PNG)", img, f"{name}_{label}.png", "image/png",
                                key=f"{key}_{label}_png")


def _pointwise(anat, name: str, *, key: str, controls: bool, downloads: bool):
    """The pointwise outputs, and one output channel taken apart into its largest contributions,
    their sum checked against the network's own output. Returns (that channel, its contributions)."""
    from xviz import flows
    from xviz.figures import maps as M
    from xviz.figures import toolkit as T

    cin, cout, cmap = anat.in_channels, anat.out_channels, colormap("maps")
    st.latex(r"Y_o = \sum_{c=1}^{" + str(cin) + r"} W_{o,c}\, D_c \qquad o = 1,\dots," + str(cout))
    order = flows.channel_order(anat.pointwise, "mean")
    shown = min(cout, 128 if controls else 64)
    grid_pw, pal_pw, layout_pw = M.channel_grid_indexed(anat.pointwise, order[:shown], cmap=cmap, min_tile=64)
    grid_pw = T.png_bytes(grid_pw, palette=pal_pw)
    st.image(grid_pw, width=grid_width(layout_pw), output_format="PNG",
             caption=f"{shown} of the {cout} pointwise outputs, highest mean first ({cin * cout:,} weights)")
    if downloads:
        st.download_button("Download pointwise maps (PNG)", grid_pw, f"{name}_pointwise.png", "image/png",
                           key=f"{key}_pointwise_png")

    o, k = int(order[0]), min(cin, 6)
    if controls:
        o = st.selectbox("Output channel to take apart", [int(i) for i in order], key=f"{key}_out",
                         help="Listed by mean activation, highest first.")
        k = st.slider("Largest contributions shown", 1, min(cin, 12), k, key=f"{key}_k")
    con = flows.pointwise_contributions(anat, o, k)
    labels = [f"ch {c} × {wt:+.3f} ({sh:.1%})" for c, wt, sh in zip(con.top, con.top_weights, con.share[:k])]
    st.image(M.tiles(list(con.top_maps), side=112), caption=labels, width=112, output_format="PNG")
    st.image(M.tiles([con.rest, con.reconstruction, con.output], side=112),
             caption=[f"+ the other {cin - k} ({1 - con.share[:k].sum():.0%})", "= sum of all", f"network's Y_{o}"],
             width=112, output_format="PNG")
    lo_top, hi_top = M.symmetric_range(*con.top_maps)
    st.caption(f"Row 1: the {k} largest terms W[o,c]·D_c of output channel {o}, {con.share[:k].sum():.0%} of the "
               f"total |contribution| (colour scale ±{hi_top:.2g}). Row 2: everything else, the sum of all {cin} "
               "terms and the network's output, on one shared scale. Blue negative, red positive. "
               + ("No single channel dominates: the output really is a mix of many." if con.share[0] < 0.1 else ""))
    verdict = (f"Sum of all {cin} contributions vs the network's own output channel {o}: max difference "
               f"**{con.max_error:.2g}** for values up to {con.scale:.3g} ({con.relative_error:.2%}).")
    if con.tolerance_ok:
        st.success(verdict + " Equal within float16 storage rounding ✓")
    else:
        st.error(verdict + " Larger than float16 rounding allows ✗")
    return o, con


def _batchnorm(anat, cap, o: int, con) -> None:
    """BN of output channel ``o`` with its own numbers, then the ReLU that follows (if one does)."""
    import numpy as np

    from xviz.figures import maps as M

    p = anat.bn
    st.latex(r"\mathrm{BN}(Y_o) = \gamma_o\,\frac{Y_o-\mu_o}{\sqrt{\sigma_o^2+\varepsilon}}+\beta_o"
             rf" = {p.gamma[o]:.3f}\cdot\frac{{Y_{{{o}}} - ({p.mean[o]:.3f})}}{{\sqrt{{{p.var[o]:.4f} + {p.eps:g}}}}}"
             rf" + ({p.beta[o]:.3f})")
    relu_next = [e.name for e in cap.plan.values() if e.source == anat.info.bn and e.derive == "relu"]
    st.markdown("BN shifts and scales the *whole sum*, one number pair per output channel, learnt in training "
                "(μ and σ² are the training data's statistics). There is **no** non-linearity between "
                "depthwise and pointwise: the paper found that works better. "
                + (f"Next, `{relu_next[0]}` sets the negative values to zero." if relu_next else
                   f"Next comes the block's end (`{anat.info.block}_add`, after max-pooling if the block "
                   "downsamples): the residual sum, before the next block's ReLU."))
    maps_bn = [con.reconstruction, con.bn_output] + ([np.maximum(con.bn_output, 0)] if relu_next else [])
    st.image([M.tiles([m], side=160)[0] for m in maps_bn], width=160, output_format="PNG",
             caption=[f"{t}: {m.min():.3g} … {m.max():.3g}" for t, m in
                      zip([f"Y_{o}", f"BN(Y_{o})", f"ReLU(BN(Y_{o}))"], maps_bn)])
    st.caption("Each tile on its own scale, zero white: BN moves zero and stretches the range; ReLU then "
               "keeps only the positive part.")

