"""Figures of the Parameters page: where Xception's weights and multiply-adds go."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    import pandas as pd

    from ..accounting import ConvCost, SeparableCost

PARAMS_COLOR = "#1f77b4"
MACS_COLOR = "#ff7f0e"
STANDARD_COLOR = "#d62728"
SEPARABLE_COLOR = "#2ca02c"


def shares_bar(shares_df: "pd.DataFrame", title: str = "") -> go.Figure:
    """Horizontal bars of each group's share of parameters and of multiply-adds.

    ``shares_df`` is :func:`xviz.accounting.shares` output: index = group, columns params, macs,
    params_share, macs_share.
    """
    groups = [str(g) for g in shares_df.index][::-1]  # first group on top
    fig = go.Figure()
    for column, share, name, color, unit in (("params", "params_share", "parameters", PARAMS_COLOR, 1e6),
                                             ("macs", "macs_share", "multiply-adds", MACS_COLOR, 1e9)):
        values = shares_df[share].to_numpy()[::-1]
        absolute = shares_df[column].to_numpy()[::-1]
        suffix = "M" if unit == 1e6 else "G"
        fig.add_trace(go.Bar(
            x=values, y=groups, orientation="h", name=name, marker_color=color,
            text=[f"{v:.1%}" for v in values], textposition="outside", cliponaxis=False,
            customdata=[f"{a / unit:,.2f} {suffix}" for a in absolute],
            hovertemplate="%{y}: %{x:.1%} of " + name + " (%{customdata})<extra></extra>"))
    fig.update_layout(barmode="group", title=dict(text=title) if title else None,
                      xaxis=dict(tickformat=".0%", title="share of the network's total",
                                 range=[0, min(1.0, float(shares_df[["params_share", "macs_share"]].max().max()) * 1.2)]),
                      yaxis=dict(automargin=True), height=120 + 60 * len(groups),
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig


def standard_vs_separable_bar(ledger_df: "pd.DataFrame", counterfactual_df: "pd.DataFrame",
                          by: str = "flow") -> go.Figure:
    """Params (millions) and multiply-adds (billions) per ``by`` group: Xception as built (separable
    convs) next to the same network with standard convs in their place."""
    fig = make_subplots(1, 2, subplot_titles=("parameters (millions)", "multiply-adds per image (billions)"),
                        horizontal_spacing=0.12)
    for frame, name, color in ((ledger_df, "Xception (separable convs)", SEPARABLE_COLOR),
                               (counterfactual_df, "same network, standard convs", STANDARD_COLOR)):
        sums = frame.groupby(by, sort=False)[["params", "macs"]].sum()
        groups = [str(g) for g in sums.index]
        for col, (column, unit, suffix) in enumerate((("params", 1e6, "M"), ("macs", 1e9, "G")), start=1):
            values = sums[column].to_numpy() / unit
            fig.add_trace(go.Bar(x=groups, y=values, name=name, marker_color=color, legendgroup=name,
                                 showlegend=col == 1, text=[f"{v:,.1f}{suffix}" for v in values],
                                 textposition="outside", cliponaxis=False,
                                 hovertemplate="%{x}: %{y:,.2f}" + suffix + "<extra>" + name + "</extra>"),
                          row=1, col=col)
    fig.update_layout(barmode="group", height=420, legend=dict(orientation="h", y=-0.15),
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def group_spectrum_plot(spectrum: "list[tuple[int, ConvCost]]", separable: "SeparableCost",
                   selected: int | None = None) -> go.Figure:
    """Parameters of a grouped k x k conv for every valid group count g (log-log), from g = 1 (a
    standard conv) to g = Cin (the depthwise step), with the depthwise separable conv as a line.

    ``spectrum`` is :func:`xviz.accounting.group_spectrum` output; MACs show on hover (for one layer
    shape they are the parameters times H_out x W_out, so one axis tells both stories).
    """
    groups = [g for g, _ in spectrum]
    params = [c.params for _, c in spectrum]
    macs = [c.macs for _, c in spectrum]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=groups, y=params, mode="lines+markers", name="grouped k×k conv, g groups",
        line=dict(color=PARAMS_COLOR), customdata=macs,
        hovertemplate="g = %{x}: %{y:,} params, %{customdata:,} MACs<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[groups[0], groups[-1]], y=[separable.params] * 2, mode="lines", name="depthwise separable "
        "(depthwise + pointwise 1×1)", line=dict(color=SEPARABLE_COLOR, dash="dash"),
        hovertemplate=f"separable: {separable.params:,} params, {separable.macs:,} MACs<extra></extra>"))
    if selected is not None and selected in groups:
        i = groups.index(selected)
        fig.add_trace(go.Scatter(
            x=[selected], y=[params[i]], mode="markers", name=f"selected g = {selected}",
            marker=dict(color=STANDARD_COLOR, size=14, symbol="diamond"),
            hovertemplate="g = %{x}: %{y:,} params<extra></extra>"))
    # dtick=1 on a log axis: one tick per power of ten, without plotly's crowded 2 and 5 minor labels
    fig.update_layout(xaxis=dict(type="log", dtick=1, title="groups g (1 = standard conv … Cin = depthwise)"),
                      yaxis=dict(type="log", dtick=1, exponentformat="SI", title="parameters"), height=400,
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=10, t=10, b=10))
    return fig
