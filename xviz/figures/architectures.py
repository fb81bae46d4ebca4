"""Figures of the Across architectures page: compute, accuracy, time and block shapes of several networks.

Inputs are :func:`xviz.accounting.compare_networks` tables (one row per network) and
:func:`xviz.accounting.network_ledger` tables (one row per layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .ledger import SEPARABLE_COLOR, STANDARD_COLOR

if TYPE_CHECKING:
    import pandas as pd

# one colour per kind of layer, the same in every chart of the page
KIND_COLORS = {"standard conv": "#d62728", "depthwise": "#2ca02c", "pointwise 1×1": "#1f77b4",
               "grouped": "#9467bd", "shortcut 1×1": "#17becf", "squeeze-excite": "#e377c2",
               "dense": "#7f7f7f", "BN": "#bcbd22"}


def _family(separable: bool) -> tuple[str, str]:
    return ("separable convolutions", SEPARABLE_COLOR) if separable else ("standard convolutions", STANDARD_COLOR)


def accuracy_vs_compute(table: "pd.DataFrame") -> go.Figure:
    """Published top-1 against multiply-adds per image (log axis), bubble area = parameters, one colour
    for the networks built from separable convs. A ``ms`` column, if present, shows on hover."""
    fig = go.Figure()
    biggest = float(table["params"].max())
    for separable in (True, False):
        part = table[table["separable"] == separable]
        if part.empty:
            continue
        name, color = _family(separable)
        timed = part["ms"] if "ms" in part else [float("nan")] * len(part)
        latency = [f"<br>{ms:.0f} ms on this CPU" if ms == ms else "" for ms in timed]  # NaN != NaN: not timed
        fig.add_trace(go.Scatter(
            x=part["macs"] / 1e9, y=part["top1"] * 100, mode="markers+text", name=name, text=part["network"],
            textposition="top center", cliponaxis=False,
            marker=dict(size=part["params"], sizemode="area", sizeref=biggest / 60 ** 2, sizemin=6, color=color,
                        opacity=0.6, line=dict(color="white", width=1)),
            customdata=list(zip(part["params"] / 1e6, latency)),
            hovertemplate="<b>%{text}</b><br>%{x:.2f} G multiply-adds<br>top-1 %{y:.1f} %<br>"
                          "%{customdata[0]:.1f} M parameters%{customdata[1]}<extra></extra>"))
    fig.update_layout(xaxis=dict(type="log", title="multiply-adds per image (billions, log scale)"),
                      yaxis=dict(title="ImageNet top-1 (%)", ticksuffix=" %"), height=460,
                      legend=dict(orientation="h", y=-0.2), margin=dict(l=10, r=10, t=30, b=10))
    return fig


def kind_shares(ledgers: "dict[str, pd.DataFrame]", titles: dict[str, str]) -> go.Figure:
    """One stacked bar per network: the share of its multiply-adds in each kind of layer."""
    fig = go.Figure()
    names = list(ledgers)[::-1]  # first network on top
    shares = {n: t.groupby("kind")["macs"].sum() / t["macs"].sum() for n, t in ledgers.items()}
    for kind, color in KIND_COLORS.items():
        values = [float(shares[n].get(kind, 0.0)) for n in names]
        if not any(values):
            continue
        fig.add_trace(go.Bar(
            x=values, y=[titles[n] for n in names], orientation="h", name=kind, marker_color=color,
            text=[f"{v:.0%}" if v >= 0.06 else "" for v in values], textposition="inside",
            hovertemplate="%{y}: %{x:.1%} of the multiply-adds in " + kind + "<extra></extra>"))
    fig.update_layout(barmode="stack", xaxis=dict(tickformat=".0%", range=[0, 1], title="share of multiply-adds"),
                      height=90 + 45 * len(names), legend=dict(orientation="h", y=-0.25),
                      margin=dict(l=10, r=10, t=10, b=10))
    return fig


def latency_bars(table: "pd.DataFrame") -> go.Figure:
    """Measured ms per image and ms per billion multiply-adds, one bar per network (needs ``ms``)."""
    fig = make_subplots(1, 2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("ms per image (batch 1)", "ms per billion multiply-adds"))
    rows = table.iloc[::-1]
    per_gmac = rows["ms"] / (rows["macs"] / 1e9)
    colors = [_family(s)[1] for s in rows["separable"]]
    for col, values, fmt in ((1, rows["ms"], "{:.0f} ms"), (2, per_gmac, "{:.0f}")):
        fig.add_trace(go.Bar(x=values, y=rows["network"], orientation="h", marker_color=colors, showlegend=False,
                             text=[fmt.format(v) for v in values], textposition="outside", cliponaxis=False,
                             hovertemplate="%{y}: %{x:.1f}<extra></extra>"), row=1, col=col)
    fig.update_layout(height=90 + 45 * len(rows), margin=dict(l=10, r=40, t=40, b=10))
    return fig


def blocks_side_by_side(blocks: "list[tuple[str, pd.DataFrame]]") -> go.Figure:
    """Each block as a column of its convs, top to bottom, box width proportional to output channels
    (one scale for all columns), labelled with kind, kernel, channels, output size, params and MACs.

    ``blocks``: (title, ledger rows of one block) pairs; BN rows are left out, the block's input is
    drawn as a first box from the first conv's input.
    """
    convs = [(title, rows[rows["kind"] != "BN"]) for title, rows in blocks]
    widest = max(max(int(r["in_channels"].iloc[0]), int(r["out_channels"].max())) for _, r in convs)
    shapes, notes = [], []  # added in one go: add_shape/add_annotation one at a time re-check the whole list
    depth = max(len(r) for _, r in convs) + 1
    for col, (title, rows) in enumerate(convs):
        cx = col * 3.2
        first = rows.iloc[0]
        boxes = [("input", "#cccccc", int(first["in_channels"]),
                  f"input: {first['in_channels']} × {first['in_h']} × {first['in_w']}")]
        for r in rows.itertuples():
            what = r.kind if r.kind.endswith("1×1") else f"{r.kind} {r.kernel}"
            boxes.append((r.kind, KIND_COLORS.get(r.kind, "#7f7f7f"), int(r.out_channels),
                          f"{what}: {r.in_channels}→{r.out_channels}, {r.out_h}×{r.out_w}<br>"
                          f"{r.params:,} params · {r.macs / 1e6:,.1f} M MACs"))
        for i, (kind, color, channels, label) in enumerate(boxes):
            y = depth - i
            half = max(channels / widest, 0.04) * 1.4
            shapes.append(dict(type="rect", x0=cx - half, x1=cx + half, y0=y - 0.32, y1=y + 0.32, fillcolor=color,
                               opacity=0.75, line=dict(width=0)))
            notes.append(dict(x=cx, y=y - 0.32, text=label, showarrow=False, yanchor="top", font=dict(size=11)))
        notes.append(dict(x=cx, y=depth + 0.7, text=f"<b>{title}</b>", showarrow=False, font=dict(size=13)))
        totals = f"block: {int(rows['params'].sum()):,} params · {rows['macs'].sum() / 1e6:,.1f} M MACs"
        notes.append(dict(x=cx, y=depth - len(boxes) + 0.2, text=totals, showarrow=False, font=dict(size=12)))
    return go.Figure(layout=dict(
        shapes=shapes, annotations=notes, height=150 + 95 * depth, margin=dict(l=10, r=10, t=10, b=10),
        showlegend=False, xaxis=dict(visible=False, range=[-1.8, 3.2 * (len(convs) - 1) + 1.8]),
        yaxis=dict(visible=False, range=[depth - max(len(r) for _, r in convs) - 1.2, depth + 1])))
