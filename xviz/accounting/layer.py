"""One convolution's parameters and multiply-adds: standard, grouped, depthwise, pointwise and
separable, the calculator's comparisons and formulas. Units: see xviz.accounting."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PADDINGS = ("same", "valid")


@dataclass(frozen=True)
class ConvCost:
    """Cost of one convolution on one image."""

    params: int  # learnable weights
    macs: int  # multiply-accumulates per image
    out_h: int  # output height
    out_w: int  # output width

    @property
    def flops(self) -> int:
        """Floating-point operations, counting a multiply-add as two."""
        return 2 * self.macs


@dataclass(frozen=True)
class SeparableCost:
    """Depthwise k x k (carries the stride) then pointwise 1 x 1, as Keras ``SeparableConv2D``."""

    depthwise: ConvCost
    pointwise: ConvCost

    @property
    def params(self) -> int:
        return self.depthwise.params + self.pointwise.params

    @property
    def macs(self) -> int:
        return self.depthwise.macs + self.pointwise.macs

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def out_h(self) -> int:
        return self.pointwise.out_h

    @property
    def out_w(self) -> int:
        return self.pointwise.out_w


def _positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def output_size(size: int, kernel: int, stride: int = 1, padding: str = "same") -> int:
    """Output length along one axis (TensorFlow/Keras conventions).

    'same': ceil(size / stride), the input is padded as needed. 'valid': no padding,
    floor((size - kernel) / stride) + 1, which needs size >= kernel.
    """
    _positive(size=size, kernel=kernel, stride=stride)
    if padding == "same":
        return math.ceil(size / stride)
    if padding == "valid":
        if kernel > size:
            raise ValueError(f"a {kernel}x{kernel} kernel with 'valid' padding needs an input of at least "
                             f"{kernel} pixels, got {size}; use 'same' padding or a smaller kernel")
        return (size - kernel) // stride + 1
    raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")


def valid_groups(cin: int, cout: int) -> list[int]:
    """Every group count g a grouped conv Cin -> Cout allows: the divisors of gcd(Cin, Cout)."""
    _positive(cin=cin, cout=cout)
    d = math.gcd(cin, cout)
    return [g for g in range(1, d + 1) if d % g == 0]


def grouped_conv(k: int, cin: int, cout: int, h: int, w: int, groups: int = 1, stride: int = 1,
                 padding: str = "same", bias: bool = False) -> ConvCost:
    """A k x k conv in ``groups`` independent channel segments: each output sees Cin/groups inputs.

    params = k^2 * (Cin/g) * Cout (+ Cout bias); MACs = k^2 * (Cin/g) * Cout * H_out * W_out.
    g = 1 is a standard conv; g = Cin = Cout is a depthwise conv (paper, section 2: the spectrum
    from regular convolution to depthwise separable).

    Raises:
        ValueError: a non-positive size, an unknown padding, or g that doesn't divide Cin and Cout.
    """
    _positive(k=k, cin=cin, cout=cout, h=h, w=w, groups=groups, stride=stride)
    if cin % groups or cout % groups:
        raise ValueError(f"groups={groups} must divide both Cin={cin} and Cout={cout}; "
                         f"valid choices: {_short_list(valid_groups(cin, cout))}")
    oh, ow = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
    weights = k * k * (cin // groups) * cout
    return ConvCost(weights + (cout if bias else 0), weights * oh * ow, oh, ow)


def standard_conv(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1,
                  padding: str = "same", bias: bool = False) -> ConvCost:
    """params = k^2 * Cin * Cout; MACs = k^2 * Cin * Cout * H_out * W_out."""
    return grouped_conv(k, cin, cout, h, w, 1, stride, padding, bias)


def depthwise_conv(k: int, cin: int, h: int, w: int, stride: int = 1, padding: str = "same") -> ConvCost:
    """One k x k filter per input channel: params = k^2 * Cin; MACs = k^2 * Cin * H_out * W_out."""
    return grouped_conv(k, cin, cin, h, w, cin, stride, padding)


def pointwise_conv(cin: int, cout: int, h: int, w: int) -> ConvCost:
    """A 1 x 1 conv mixing channels: params = Cin * Cout; MACs = Cin * Cout * H * W."""
    return grouped_conv(1, cin, cout, h, w, 1, 1, "same")


def separable_conv(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1,
                   padding: str = "same") -> SeparableCost:
    """Depthwise k x k (with the stride) then pointwise 1 x 1 at the output size."""
    dw = depthwise_conv(k, cin, h, w, stride, padding)
    return SeparableCost(dw, pointwise_conv(cin, cout, dw.out_h, dw.out_w))


def separable_ratio(k: int, cout: int) -> float:
    """Separable / standard cost, for params and for MACs: 1/Cout + 1/k^2.

    Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
    Applications", eq. 5.
    """
    _positive(k=k, cout=cout)
    return 1 / cout + 1 / (k * k)


def group_spectrum(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1,
                   padding: str = "same") -> list[tuple[int, ConvCost]]:
    """(g, cost) of the grouped k x k conv for every valid g, from 1 (standard) upwards."""
    return [(g, grouped_conv(k, cin, cout, h, w, g, stride, padding)) for g in valid_groups(cin, cout)]


def compare_layer(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1, padding: str = "same",
                  groups: int = 1) -> "pd.DataFrame":
    """One table for the calculator: standard, depthwise, pointwise, separable and grouped conv.

    Columns: conv, params, macs, vs_standard (cost relative to the standard conv, params and MACs alike).
    """
    import pandas as pd

    std = standard_conv(k, cin, cout, h, w, stride, padding)
    sep = separable_conv(k, cin, cout, h, w, stride, padding)
    grp = grouped_conv(k, cin, cout, h, w, groups, stride, padding)
    rows = [(f"standard {k}×{k}", std), (f"depthwise {k}×{k}", sep.depthwise), ("pointwise 1×1", sep.pointwise),
            ("separable = depthwise + pointwise", sep), (f"grouped {k}×{k}, g = {groups}", grp)]
    return pd.DataFrame([(name, c.params, c.macs, c.params / std.params) for name, c in rows],
                        columns=["conv", "params", "macs", "vs_standard"])


def formulas_latex(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1, padding: str = "same",
                   groups: int = 1) -> str:
    """The calculator's formulas with the numbers filled in, as one LaTeX ``aligned`` block."""
    std = standard_conv(k, cin, cout, h, w, stride, padding)
    sep = separable_conv(k, cin, cout, h, w, stride, padding)
    grp = grouped_conv(k, cin, cout, h, w, groups, stride, padding)

    def n(x: int) -> str:
        return f"{x:,}".replace(",", "{,}")  # braces stop LaTeX from spacing the comma like punctuation

    return (r"\begin{aligned}"
            rf"\text{{standard:}} &\; k^2 C_{{in}} C_{{out}} = {k}^2\cdot {cin}\cdot {cout} = {n(std.params)}\\"
            rf"\text{{separable:}} &\; k^2 C_{{in}} + C_{{in}} C_{{out}} = {k}^2\cdot {cin} + {cin}\cdot {cout}"
            rf" = {n(sep.params)}\\"
            rf"\text{{grouped:}} &\; k^2 \tfrac{{C_{{in}}}}{{g}} C_{{out}} = {k}^2\cdot \tfrac{{{cin}}}{{{groups}}}"
            rf"\cdot {cout} = {n(grp.params)}\\"
            rf"\text{{MACs}} &= \text{{params}} \times H_{{out}} W_{{out}} = \text{{params}} \times {std.out_h}"
            rf"\cdot {std.out_w}\\"
            rf"\frac{{\text{{separable}}}}{{\text{{standard}}}} &= \frac{{1}}{{C_{{out}}}} + \frac{{1}}{{k^2}}"
            rf" = \frac{{1}}{{{cout}}} + \frac{{1}}{{{k * k}}} = {separable_ratio(k, cout):.4f}"
            r"\end{aligned}")


def _short_list(values: list[int], n: int = 12) -> str:
    shown = ", ".join(map(str, values[:n]))
    return shown + (f", … ({len(values)} in all)" if len(values) > n else "")
