"""The guided tour: its steps, the sentences a class reads at each one, and every number they quote.

Nothing here is typed in. Shapes come from :func:`xviz.flows.layer_table` at the tour's input size,
parameter counts from the network's own tensors (:func:`xviz.flows.architecture`,
:func:`xviz.accounting.ledger` and its standard-conv :func:`~xviz.accounting.counterfactual`), so
the tour follows whatever model and input size the app is using: another input size changes every
shape and multiply-add count, another model (a 6-class head instead of ImageNet's 1000) changes the
head's parameters. Pure: no Streamlit; the page ``pages/tour.py`` renders what this module says.

Example:
    >>> m = xviz.load_model("kitchenware")
    >>> f = tour.facts_for(m)
    >>> f.separable.standard_params, f.separable.params
    (4769856, 536536)
"""

from __future__ import annotations

from dataclasses import dataclass

from .attributions import DEFAULT_LAYER as GRADCAM_LAYER

SEPARABLE = "block5_sepconv1"  # the conv the tour takes apart: first of the middle flow's 24, 728 -> 728
FLOW_ORDER = ("entry_flow", "middle_flow", "exit_flow")


@dataclass(frozen=True)
class Step:
    slug: str  # also accepted in the URL: ?step=separable
    title: str
    short: str  # for the step strip


STEPS = (
    Step("input", "The input and its preprocessing", "Input"),
    Step("entry", "The stem and the entry flow", "Entry flow"),
    Step("separable", "One separable convolution, taken apart", "Separable conv"),
    Step("middle", "The middle flow and its residual connections", "Middle flow"),
    Step("exit", "The exit flow", "Exit flow"),
    Step("prediction", "The prediction", "Prediction"),
    Step("gradcam", "Where did it look? Grad-CAM", "Grad-CAM"),
)


def parse_step(value) -> tuple[int, str | None]:
    """(0-based step index, message or None) for the URL's ``step``: a number from 1 or a slug.

    Anything else opens the first step, with a sentence saying why.
    """
    if value is None or value == "":
        return 0, None
    if isinstance(value, (list, tuple)):  # ?step=2&step=5: the last one wins, as in st.query_params
        value = value[-1]
    text = str(value).strip().lower()
    slugs = [s.slug for s in STEPS]
    if text in slugs:
        return slugs.index(text), None
    if text.isdigit() and 1 <= int(text) <= len(STEPS):
        return int(text) - 1, None
    return 0, (f"The link asks for step “{value}”, which the tour doesn't have: it has steps 1 to "
               f"{len(STEPS)} ({', '.join(slugs)}). Starting at step 1.")


# -- the numbers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """One layer's output at the tour's input size."""

    name: str  # Keras name
    height: int
    width: int
    channels: int
    stride: int  # total downsampling from the input

    @property
    def text(self) -> str:
        return f"{self.height}×{self.width}×{self.channels}"

    @property
    def values(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True)
class SeparableFacts:
    """Parameters and multiply-adds of one separable conv and of the standard conv it replaces."""

    name: str
    kernel: int
    cin: int
    cout: int
    height: int  # output height at the tour's input size
    width: int
    depthwise_params: int
    pointwise_params: int
    standard_params: int  # k^2 * Cin * Cout: one standard k x k conv from Cin to Cout
    depthwise_macs: int
    pointwise_macs: int
    standard_macs: int

    @property
    def params(self) -> int:
        return self.depthwise_params + self.pointwise_params

    @property
    def macs(self) -> int:
        return self.depthwise_macs + self.pointwise_macs

    @property
    def param_saving(self) -> float:
        return self.standard_params / self.params

    @property
    def mac_saving(self) -> float:
        return self.standard_macs / self.macs


@dataclass(frozen=True)
class HeadLayer:
    name: str
    inputs: int
    outputs: int

    @property
    def params(self) -> int:
        return self.inputs * self.outputs + self.outputs  # weights + biases


@dataclass(frozen=True)
class TourFacts:
    """Every number the tour quotes, for one model at one input size."""

    input_size: int
    preprocessing: str  # how a photo becomes the input, in words
    trained: bool
    stem: tuple[Shape, Shape]  # block1_conv1_act, block1_conv2_act
    stem_params: int
    first_conv_kernel: int  # block1_conv1's kernel side
    first_conv_stride: int
    entry_out: Shape  # the entry flow's output
    entry_params: int
    separable: SeparableFacts
    separables_per_block: int  # in one middle-flow block
    middle_blocks: tuple[str, ...]
    middle_out: Shape  # a middle block's output (all eight share it)
    middle_block_params: tuple[int, ...]  # per middle-flow block
    exit_in: Shape  # the exit flow's first block output (after its strided shortcut)
    exit_out: Shape  # the last map before pooling
    exit_params: int
    features: int  # what global average pooling hands to the classifier
    head: tuple[HeadLayer, ...]
    classes: int
    total_params: int
    gradcam: Shape  # the layer Grad-CAM differentiates

    @property
    def input_values(self) -> int:
        return self.input_size * self.input_size * 3

    @property
    def head_params(self) -> int:
        return sum(layer.params for layer in self.head)

    @property
    def middle_params(self) -> int:
        return sum(self.middle_block_params)

    @property
    def middle_share(self) -> float:
        return self.middle_params / self.total_params


def _shape(rows: dict, name: str) -> Shape:
    r = rows[name]
    return Shape(r.name, r.height, r.width, r.channels, r.stride)


def facts(model, table, arch, ledger_df, twin_df) -> TourFacts:
    """Assemble the tour's numbers from tables already computed for ``model`` at one input size.

    Args:
        model: the :class:`xviz.LoadedModel` (labels, preprocessing, trained flag).
        table: :func:`xviz.flows.layer_table` at the tour's size.
        arch: :func:`xviz.flows.architecture` at that size.
        ledger_df, twin_df: :func:`xviz.accounting.ledger` at that size and its
            :func:`~xviz.accounting.counterfactual`.
    """
    rows = {r.name: r for r in table}
    size = arch[0].input_shape[-1]
    by_flow = {flow: [b for b in arch if b.flow == flow] for flow in (*FLOW_ORDER, "head")}

    def block_out(block: str) -> Shape:
        return _shape(rows, [r.name for r in table if r.block == block][-1])  # forward order: last = output

    records = ledger_df.to_dict("records")
    dw = next(r for r in records if r["keras_layer"] == SEPARABLE and r["kind"] == "depthwise")
    pw = next(r for r in records if r["keras_layer"] == SEPARABLE and r["kind"] == "pointwise")
    std = next(r for r in twin_df.to_dict("records") if r["layer"] == SEPARABLE)
    sep = SeparableFacts(SEPARABLE, int(dw["kernel"]), int(dw["in_channels"]), int(pw["out_channels"]),
                         int(pw["out_h"]), int(pw["out_w"]), int(dw["params"]), int(pw["params"]),
                         int(std["params"]), int(dw["macs"]), int(pw["macs"]), int(std["macs"]))
    first_middle = by_flow["middle_flow"][0].name
    per_block = sum(1 for r in records if r["kind"] == "depthwise" and r["block"] == first_middle)
    head = tuple(HeadLayer(r["layer"], int(r["in_channels"]), int(r["out_channels"]))
                 for r in records if r["kind"] == "fc")
    stem_block = by_flow["entry_flow"][0].name
    stem = [r.name for r in table if r.block == stem_block]
    first = next(r for r in records if r["kind"] == "regular conv")
    return TourFacts(
        input_size=int(size),
        preprocessing=model.preprocessing.describe(),
        trained=bool(model.trained),
        stem=(_shape(rows, stem[0]), _shape(rows, stem[-1])),
        stem_params=by_flow["entry_flow"][0].params,
        first_conv_kernel=int(first["kernel"]),
        first_conv_stride=int(first["stride"]),
        entry_out=block_out(by_flow["entry_flow"][-1].name),
        entry_params=sum(b.params for b in by_flow["entry_flow"]),
        separable=sep,
        separables_per_block=per_block,
        middle_blocks=tuple(b.name for b in by_flow["middle_flow"]),
        middle_out=block_out(first_middle),
        middle_block_params=tuple(b.params for b in by_flow["middle_flow"]),
        exit_in=block_out(by_flow["exit_flow"][0].name),
        exit_out=block_out(by_flow["exit_flow"][-1].name),
        exit_params=sum(b.params for b in by_flow["exit_flow"]),
        features=int(model.net.num_features),
        head=head,
        classes=len(model.labels) if model.net.num_classes else 0,
        total_params=sum(b.params for b in arch),
        gradcam=_shape(rows, GRADCAM_LAYER),
    )


def facts_for(model, size: int | None = None) -> TourFacts:
    """:func:`facts` computed from scratch (three shape-only forward passes) — for notebooks and tests."""
    from . import accounting, flows

    size = size or model.input_size
    table = accounting.ledger(model, size)
    return facts(model, flows.layer_table(model, size), flows.architecture(model, size), table,
                 accounting.counterfactual(table))


# -- what the class reads ------------------------------------------------------------------------

def n(x: int) -> str:
    return f"{x:,}"


@dataclass(frozen=True)
class Question:
    """A question with its answer and the working that leads there, all computed."""

    text: str
    answer: str  # markdown
    working: str  # LaTeX (one line), or "" when the answer needs none


def narrative(f: TourFacts, step: str) -> str:
    """The few sentences a class reads at ``step`` (a slug of :data:`STEPS`), as markdown."""
    s, sep = f.input_size, f.separable
    c1, c2 = f.stem
    if step == "input":
        return (f"The network always reads a square of **{s}×{s} pixels × 3 colours = {n(f.input_values)} "
                f"numbers**, whatever the size of your photo. Here the photo is {f.preprocessing}: the "
                "size and the range of numbers the weights were trained on. Another input size changes the "
                "size of every map that follows, not the weights.")
    if step == "entry":
        return (f"The **stem** is two ordinary 3×3 convolutions: `{c1.name}` ({c1.text}) and `{c2.name}` "
                f"({c2.text}). Each channel is one filter slid over the whole picture: its map is bright "
                "where the filter's pattern appears. So early channels answer simple questions about every "
                "place — *an edge of this orientation? this colour? a flat area?* Look in the grid for channels "
                "that trace the outline of the object, and for ones that light up on one colour. Then three "
                "residual "
                "blocks of separable convolutions each halve the size and widen the channels, down to "
                f"`{f.entry_out.name}`: **{f.entry_out.text}**, one map pixel for every "
                f"{f.entry_out.stride}×{f.entry_out.stride} pixels of the input.")
    if step == "separable":
        return (f"`{sep.name}` reads {sep.height}×{sep.width}×{sep.cin} and writes {sep.height}×{sep.width}×"
                f"{sep.cout}. A standard {sep.kernel}×{sep.kernel} convolution would give *every* output "
                f"channel a {sep.kernel}×{sep.kernel} filter on *every* input channel. Xception splits that "
                f"in two: **depthwise** — one {sep.kernel}×{sep.kernel} filter per input channel "
                f"({n(sep.depthwise_params)} weights), channels never mix — then **pointwise** — a 1×1 "
                f"convolution that mixes the {sep.cin} filtered maps into each output ({n(sep.pointwise_params)}"
                f" weights). Together **{n(sep.params)} weights** for this very layer — the question below "
                "asks what a standard convolution would have cost.")
    if step == "middle":
        k = len(f.middle_blocks)
        return (f"The middle flow is the same block {k} times ({f.middle_blocks[0]} … {f.middle_blocks[-1]}): "
                f"ReLU → separable conv → BN, {f.separables_per_block} times, at a fixed "
                f"**{f.middle_out.text}**. Each block *adds* its result to its own input (an identity "
                "shortcut): the block only has to learn a correction, and the signal — and in training the "
                "gradient — can skip straight through. Below, one channel: branch + shortcut = sum, checked "
                "on the real numbers.")
    if step == "exit":
        return (f"The exit flow halves the size once more and widens to `{f.exit_in.name}` "
                f"({f.exit_in.text}), then two separable convolutions (with ReLU after each) reach "
                f"`{f.exit_out.name}`: **{f.exit_out.text}**. Here one map pixel stands for a "
                f"{f.exit_out.stride}×{f.exit_out.stride}-pixel step in the input, and a channel no longer asks "
                "*an edge here?* but about something larger — a texture, a part of an object. **Global average "
                "pooling** then averages each channel "
                f"over its {f.exit_out.height}×{f.exit_out.width} positions: {n(f.features)} numbers that "
                "describe the image, no longer where things are.")
    if step == "prediction":
        if not f.head:
            return ("This model has no classifier head (a 'notop' backbone): it stops at the "
                    f"{n(f.features)} pooled features and can't name a class.")
        layers = " → ".join(f"{h.name} ({n(h.inputs)}→{n(h.outputs)})" for h in f.head)
        return (f"The classifier reads the {n(f.features)} features: {layers}. Its last layer gives each of "
                f"the {n(f.classes)} classes a score, and softmax turns the scores into probabilities that sum "
                "to 1. A high probability means the model is *confident*, not that it is right: it can only "
                "choose among the classes it was trained on.")
    if step == "gradcam":
        g = f.gradcam
        return (f"Grad-CAM asks: which places of `{g.name}` ({g.text}) pushed the top class's score up? It "
                "weighs each channel by how much the score changes when that channel grows (its gradient, "
                f"averaged over the map), sums the weighted maps and keeps the positive part. The result is a "
                f"{g.height}×{g.width} grid, stretched over the {s}×{s} input: the hotter the colour, the stronger the evidence. "
                "Coarse, because by this layer each position sees a large part of the image.")
    raise ValueError(f"unknown step {step!r}; steps are {', '.join(s.slug for s in STEPS)}")


def question(f: TourFacts, step: str) -> Question | None:
    """The step's question with its computed answer, or None where the step asks none."""
    s, sep = f.input_size, f.separable
    if step == "input":
        c, k, st = f.stem[0], f.first_conv_kernel, f.first_conv_stride
        valid = (s - k) // st + 1 == c.height  # no padding (Keras' default), as block1_conv1 has
        formula = (rf"\left\lfloor \frac{{{s} - {k}}}{{{st}}} \right\rfloor + 1 = {c.height}" if valid else
                   rf"\left\lceil \frac{{{s}}}{{{st}}} \right\rceil = {c.height}")
        return Question(f"The first layer, `{c.name.removesuffix('_act')}`, slides {c.channels} filters of "
                        f"{k}×{k} pixels over the {s}×{s} input, {st} pixels at a time"
                        + (", never past its edge" if valid else "") + ". How big is its output?",
                        f"**{c.text}**: {c.height}×{c.width} positions, one map per filter.", formula)
    if step == "entry":
        e = f.entry_out
        ratio = e.values / f.input_values
        return Question(f"The entry flow turns the {s}×{s}×3 input into {e.text}. Does the image get smaller, "
                        "in numbers?",
                        f"Hardly: {n(f.input_values)} numbers in, **{n(e.values)}** out "
                        f"({ratio:.0%} as many). Space is traded for channels: each of the {e.height}×{e.width} "
                        f"positions is now described by {e.channels} numbers instead of 3.",
                        rf"{e.height} \times {e.width} \times {e.channels} = {_tex(e.values)}"
                        rf"\quad\text{{vs}}\quad {s} \times {s} \times 3 = {_tex(f.input_values)}")
    if step == "separable":
        k = sep.kernel
        return Question(f"How many parameters would a standard {k}×{k} convolution need here, from {sep.cin} "
                        f"to {sep.cout} channels?",
                        f"**{n(sep.standard_params)}**, against {n(sep.params)} for the separable one: "
                        f"{sep.param_saving:.1f}× more. On this {s}-px image it would also cost "
                        f"{n(sep.standard_macs)} multiply-adds instead of {n(sep.macs)} "
                        f"({sep.mac_saving:.1f}×).",
                        rf"{k}^2 \cdot {sep.cin} \cdot {sep.cout} = {_tex(sep.standard_params)}\quad\text{{vs}}\quad "
                        rf"{k}^2 \cdot {sep.cin} + {sep.cin} \cdot {sep.cout} = {_tex(sep.params)}")
    if step == "middle":
        return Question("What share of all the network's parameters sits in the middle flow?",
                        f"**{f.middle_share:.0%}**: {n(f.middle_params)} of {n(f.total_params)} "
                        + (f"({len(f.middle_blocks)} blocks × {n(f.middle_block_params[0])})."
                         if len(set(f.middle_block_params)) == 1 else "."),
                        rf"\frac{{{_tex(f.middle_params)}}}{{{_tex(f.total_params)}}} = {f.middle_share:.3f}")
    if step == "exit":
        o = f.exit_out
        return Question(f"How many numbers go into global average pooling, and how many come out?",
                        f"**{n(o.values)} in, {n(f.features)} out**: each of the {o.channels} channels is "
                        f"averaged over its {o.height}×{o.width} = {o.height * o.width} positions.",
                        rf"{o.height} \times {o.width} \times {o.channels} = {_tex(o.values)} \;\to\; "
                        rf"{_tex(f.features)}")
    if step == "prediction":
        if not f.head:
            return None
        terms = " + ".join(rf"{_tex(h.inputs)} \cdot {_tex(h.outputs)} + {_tex(h.outputs)}" for h in f.head)
        return Question("How many parameters does this model's classifier head have?",
                        f"**{n(f.head_params)}** — {f.head_params / f.total_params:.1%} of the "
                        f"{n(f.total_params)} in the whole network. A weight from every input to every output, "
                        "plus one bias per output.",
                        rf"{terms} = {_tex(f.head_params)}")
    if step == "gradcam":
        g = f.gradcam
        return Question(f"The map is computed on a {g.height}×{g.width} grid. How many input pixels apart are two "
                        "neighbouring cells?",
                        f"**{g.stride} pixels**: by `{g.name}` the network has halved the size "
                        f"{g.stride.bit_length() - 1} times. {g.height}×{g.width} = {g.height * g.width} cells "
                        f"cover the {s}×{s} input.",
                        rf"{g.height} \times {g.width} = {g.height * g.width},\quad 2^{{{g.stride.bit_length() - 1}}}"
                        rf" = {g.stride}")
    raise ValueError(f"unknown step {step!r}; steps are {', '.join(s.slug for s in STEPS)}")


def _tex(x: int) -> str:
    return f"{x:,}".replace(",", "{,}")  # braces stop LaTeX from spacing the comma like punctuation
