"""Figures of the Predict page."""

from __future__ import annotations

import plotly.graph_objects as go


def topk_bar(predictions: list[tuple[str, float]], title: str = "") -> go.Figure:
    """Horizontal bars of (label, probability), most likely on top."""
    labels = [_short(label) for label, _ in predictions][::-1]
    probs = [p for _, p in predictions][::-1]
    # one constructor call: plotly checks each property once (update_layout would parse and check again)
    return go.Figure(
        data=[go.Bar(x=probs, y=labels, orientation="h", text=[f"{p:.1%}" for p in probs], textposition="auto",
                     hovertext=[label for label, _ in predictions][::-1], hoverinfo="text+x",
                     marker=dict(color=["#1f77b4"] * (len(probs) - 1) + ["#d62728"] if probs else None))],
        layout=dict(title=dict(text=title) if title else None,
                    xaxis=dict(range=[0, 1], tickformat=".0%", title=dict(text="probability")),
                    yaxis=dict(automargin=True), height=60 + 38 * len(probs),
                    margin=dict(l=10, r=10, t=40 if title else 10, b=40)))


def _short(label: str, width: int = 40) -> str:
    """ImageNet names list synonyms ('tabby, tabby cat'); the first is enough on an axis."""
    first = label.split(",")[0].strip()
    return first if len(first) <= width else first[: width - 1] + "…"
