"""Parameters: what depthwise separable convolutions save, from one layer to the whole network."""

import streamlit as st

from xviz import accounting as A
from xviz import ui
from xviz.figures import group_spectrum_plot, shares_bar, standard_vs_separable_bar

ui.page_header("Parameters and compute",
               "Xception's claim is *better accuracy with fewer parameters*. Check it: one layer with "
               "sliders, then the whole network with its real numbers. MACs are multiply-accumulates "
               "per image (1 MAC ≈ 2 FLOPs); parameters are learned weights.")
model = ui.required_model()
size = model.input_size
table, twin = ui.ledger(model)
ours, std = A.totals(table), A.totals(twin)
NUM = {c: st.column_config.NumberColumn(format="localized") for c in ("params", "macs", "bn_statistics")}

st.header("One layer")
presets = A.separable_presets(table)
preset = st.selectbox(f"Start from a separable conv of this network (at {size} px)", presets,
                      format_func=lambda p: p["label"],
                      index=next((i for i, p in enumerate(presets) if "block5_sepconv1" in p["layers"]), 0))
c = st.columns(6)
k = c[0].number_input("kernel k", 1, 15, preset["k"])
cin = c[1].number_input("Cin", 1, 4096, preset["cin"])
cout = c[2].number_input("Cout", 1, 4096, preset["cout"])
h = c[3].number_input("H", 1, 1024, preset["h"])
w = c[4].number_input("W", 1, 1024, preset["w"])
stride = c[5].selectbox("stride", (1, 2), index=preset["stride"] - 1)
padding = st.radio("padding", A.PADDINGS, horizontal=True)
groups = st.select_slider("groups g of a grouped conv (1 = standard … Cin = depthwise)",
                          A.valid_groups(cin, cout), value=1)
try:
    layer = A.compare_layer(k, cin, cout, h, w, stride, padding, groups)
except ValueError as exc:  # 'valid' padding with a kernel larger than the input
    layer = None
    st.error(f"{exc}.")
if layer is not None:
    st.latex(A.formulas_latex(k, cin, cout, h, w, stride, padding, groups))
    st.caption("The ratio is eq. 5 of Howard et al. 2017 (MobileNets); exact for weights and MACs of a conv "
               "without bias.")
    st.dataframe(ui.drawn_table(("layer vs standard", k, cin, cout, h, w, stride, padding, groups), lambda: layer),
                 hide_index=True, column_config={**NUM, "vs_standard": st.column_config.NumberColumn(
        "× standard", format="%.4f")})
    spectrum = ui.drawn(("group spectrum", k, cin, cout, h, w, stride, padding, groups), lambda: group_spectrum_plot(
        A.group_spectrum(k, cin, cout, h, w, stride, padding), A.separable_conv(k, cin, cout, h, w, stride, padding),
        groups))
    st.plotly_chart(spectrum)
st.caption("The paper's spectrum (section 2): a regular conv is one segment of channels, an Inception module a "
           "few, a depthwise conv one per channel. At g = Cin the grouped conv is only the depthwise step: the "
           "separable conv adds the 1×1 pointwise step to mix channels again.")

st.header(f"The whole network at {size}×{size} px")
m = st.columns(4)
m[0].metric("parameters", f"{ours.params:,}")
m[1].metric("multiply-adds per image", f"{ours.macs / 1e9:.2f} G", help=f"{ours.macs:,} MACs ≈ {ours.flops / 1e9:.1f} GFLOPs")
m[2].metric("with standard convs: parameters", f"{std.params:,}", f"×{std.params / ours.params:.2f}", delta_color="inverse")
m[3].metric("with standard convs: multiply-adds", f"{std.macs / 1e9:.2f} G", f"×{std.macs / ours.macs:.2f}", delta_color="inverse")
left, right = st.columns(2)
# the same three charts for everyone on this model: drawn once (ui.drawn)
left.plotly_chart(ui.drawn(("shares", "flow", model.key),
                           lambda: shares_bar(A.shares(table, "flow"), "share by flow")))
right.plotly_chart(ui.drawn(("shares", "kind", model.key),
                            lambda: shares_bar(A.shares(table, "kind"), "share by kind of layer")))
st.plotly_chart(ui.drawn(("standard vs separable", model.key), lambda: standard_vs_separable_bar(table, twin)))
st.caption("Every chart has a camera icon in its top-right toolbar (hover over the chart): it downloads a PNG.")
shown = ui.drawn_table(("ledger", model.key), lambda: table[
    ["layer", "kind", "flow", "block", "output_shape", "params", "macs", "bn_statistics"]])
st.dataframe(shown, hide_index=True, column_config=NUM, height=360)
with st.expander("The same network with every separable conv replaced by a standard conv"):
    st.dataframe(ui.drawn_table(("ledger twin", model.key), lambda: twin[
        ["layer", "kind", "flow", "block", "output_shape", "params", "macs"]]), hide_index=True,
                 column_config=NUM, height=360)
head = int(table.loc[table["kind"] == "fc", "params"].sum())
st.markdown(
    f"**Why Keras says {ours.keras_total:,}.** Each BatchNorm layer also keeps a running mean and variance "
    f"per channel, gathered during training and not learned by gradient descent: {ours.bn_statistics:,} numbers "
    f"in {int((table['kind'] == 'BN').sum())} BN layers. The paper counts only learned weights ({ours.params:,} "
    f"here); Keras' *Total params* adds the statistics. Without its classifier head ({head:,} params) the "
    f"backbone has {ours.params - head:,} parameters, whatever head a checkpoint carries; ImageNet's 1000-class "
    f"layer adds {(model.net.num_features + 1) * 1000:,}.")

st.header("What the paper reports")
st.dataframe(ui.drawn_table(("paper facts",), lambda: [
    {"model": f.model, "parameters": f.params, "top-1": f.top1, "top-5": f.top5, "source": f.source}
    for f in A.PAPER_FACTS]), hide_index=True, placeholder="—",
             column_config={"parameters": st.column_config.NumberColumn(format="localized"),
                            **{c: st.column_config.NumberColumn(format="%.3f") for c in ("top-1", "top-5")}})
st.caption(f"{A.PAPER}. Xception has slightly fewer parameters than Inception V3 and scores higher: the gain "
           "comes from using parameters better, not from having more. The paper counts parameters only for these two.")
st.page_link("pages/architectures.py", label="Beyond Xception: MobileNet, EfficientNet, ResNet and VGG counted, "
             "compared and timed (Across architectures)", icon=":material/compare_arrows:")

st.header("Measured speed")
st.markdown("Fewer multiply-adds need not mean proportionally less time: a depthwise conv does little arithmetic "
            "per byte it reads, so it waits on memory, and on a GPU a single image is so little work that launching "
            "the kernels costs as much as running them (try batch 32). Time the selected layer shape on this machine:")
batch = st.select_slider("batch (images at once)", (1, 8, 32), value=1)
if st.button(f"Time a standard {k}×{k} conv against its separable twin on {model.device_name}"):
    try:
        with st.spinner("Timing…"):
            r = A.time_standard_vs_separable(k, cin, cout, h, w, stride, device=model.device, batch=batch)
    except ValueError as exc:
        st.error(f"{exc}.")
        st.stop()
    t = st.columns(4)
    t[0].metric("standard", f"{r.standard_ms:.3g} ms")
    t[1].metric("separable", f"{r.separable_ms:.3g} ms")
    t[2].metric("FLOP saving", f"×{r.flop_ratio:.2f}")
    t[3].metric("wall-time saving", f"×{r.time_ratio:.2f}")
    st.caption(f"Measured on {r.device}: {r.shape}, fp32, {r.memory_format}; medians of {r.rounds} alternating "
               f"rounds after warm-up (torch.utils.benchmark); interquartile ranges {r.standard_iqr_ms:.2g} and "
               f"{r.separable_iqr_ms:.2g} ms. A busy machine makes these noisy: rerun to compare.")
