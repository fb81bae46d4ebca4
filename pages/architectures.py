"""Across architectures: separable convolutions beyond Xception, counted, compared and timed."""

import streamlit as st

from xviz import across, ui, zoo
from xviz.figures import accuracy_vs_compute, blocks_side_by_side, kind_shares, latency_bars

ui.page_header("Across architectures",
               "Xception took the depthwise separable convolution to the extreme; MobileNet, MobileNetV2 and "
               "EfficientNet made it the backbone of small, fast networks. Here are seven ImageNet networks, built "
               "as Keras builds them and counted layer by layer with the same code as *Parameters and compute*, "
               "each at its native input size. Counting needs no weights.")
counts = ui.zoo_counts()  # counted once per server in the background; its progress until then
table, ledgers = counts.table, counts.ledgers
titles = dict(zip(table["name"], table["network"]))
latency: across.NetworkLatency | None = st.session_state.get("zoo_latency")
if latency is not None:
    table = table.assign(ms=table["name"].map(latency.ms))
    table["ms_per_gmac"] = table["ms"] / (table["macs"] / 1e9)
separable = table[table["separable"]]

# the counts are the same for every student: so are the figures and sentences drawn from them (ui.drawn)
st.plotly_chart(accuracy_vs_compute(table) if latency is not None
                else ui.drawn(("across", "accuracy"), lambda: accuracy_vs_compute(table)))
sizes = "; ".join(f"{size} px: {', '.join(g['network'])}" for size, g in table.groupby("input", sort=False))
st.caption(f"Top-1 accuracy is published, not measured here: {zoo.TOP1_SOURCE}. Multiply-adds and parameters are "
           f"counted from the networks built here, at their native input sizes ({sizes}); bubble area is parameters.")
cols = {"network": "network", "input": "input (px)", "params": "parameters", "macs": "multiply-adds", "top1": "top-1",
        "pointwise_share": "MACs in 1×1 pointwise", "depthwise_share": "MACs in depthwise", "ms": "ms per image",
        "ms_per_gmac": "ms per GMAC"}


def shown():  # the shown columns, renamed: rebuilt on every rerun only while this session's timings show
    return table[[c for c in cols if c in table]].rename(columns=cols)


st.dataframe(shown() if latency is not None else ui.drawn_table(("across", "table"), shown),
             hide_index=True, column_config={
    "parameters": st.column_config.NumberColumn(format="localized"),
    "multiply-adds": st.column_config.NumberColumn(format="localized"),
    "top-1": st.column_config.NumberColumn(format="percent"),
    **{c: st.column_config.NumberColumn(format="percent") for c in ("MACs in 1×1 pointwise", "MACs in depthwise")},
    **{c: st.column_config.NumberColumn(format="%.1f") for c in ("ms per image", "ms per GMAC")}})

st.header("Measured speed on this machine")
st.markdown("Multiply-adds are not time. A depthwise 3×3 conv uses each value it reads for 9 multiply-adds, a "
            "pointwise conv once per output channel, hundreds of times: the depthwise layers wait on memory, so "
            "separable networks get fewer multiply-adds done per millisecond, and a network with far fewer "
            "multiply-adds is not that much faster. Time them here:")
rounds = st.select_slider("timed rounds (each network runs once per round; the median is kept)", (1, 3, 5), value=3)
if st.button("Time all seven networks on this machine's CPU (batch 1, random weights)"):
    st.session_state["zoo_latency"] = ui.zoo_latency(rounds)  # one timing at a time per server: joins a running one
    st.rerun()
if latency is None:
    st.info(f"Not timed yet in this session. The button builds the seven networks and runs each {rounds + 1} times "
            f"(one warm-up): {table['macs'].sum() * (rounds + 1) / 1e9:.0f} billion multiply-adds in all.")
else:
    st.plotly_chart(latency_bars(table))
    fastest, by = table.loc[table["ms_per_gmac"].idxmin()], table.set_index("name")
    fewer = by.loc["xception", "macs"] / by.loc["mobilenet_v2", "macs"]
    st.markdown(f"Per multiply-add, **{fastest['network']}** runs fastest here ({fastest['ms_per_gmac']:.1f} ms per "
                f"GMAC); the separable networks need {separable['ms_per_gmac'].min():.1f}–"
                f"{separable['ms_per_gmac'].max():.1f} ms per GMAC. MobileNetV2 has {fewer:.0f}× fewer multiply-adds "
                f"than Xception and ran {by.loc['xception', 'ms'] / by.loc['mobilenet_v2', 'ms']:.1f}× faster.")
    st.caption(f"Measured on {latency.device}: fp32, channels-last, batch 1, random weights (time doesn't depend on "
               f"them), median of {latency.rounds} interleaved rounds after a warm-up. Machine load average "
               f"{latency.load[0]:.1f} before and {latency.load[1]:.1f} after: other work on the machine slows "
               "every network alike.")

st.header("Lesson 1: the 1×1 convolutions do the work")
st.plotly_chart(ui.drawn(("across", "kind shares"), lambda: kind_shares(ledgers, titles)))
shares = ", ".join(f"{r.network} {r.pointwise_share:.1%}" for r in separable.itertuples())
st.markdown(f"In every separable network the 1×1 pointwise convolutions carry most of the multiply-adds ({shares}); "
            f"the depthwise convolutions, the spatial part, carry at most {separable['depthwise_share'].max():.1%}. "
            "Separating space from channels made spatial filtering almost free; mixing channels is what costs.")

st.header("Lesson 2: MobileNetV2 turns the residual block inside out")
blocks = ui.drawn(("across", "blocks"), lambda: {n: list(dict.fromkeys(b for b in t["block"] if b))
                                                 for n, t in ledgers.items()})
c = st.columns(3)
pick = {"xception": c[0].selectbox("Xception block", blocks["xception"], index=blocks["xception"].index("block5")),
        "mobilenet_v2": c[1].selectbox("MobileNetV2 block", blocks["mobilenet_v2"],
                                       index=blocks["mobilenet_v2"].index("block_14")),
        "resnet50": c[2].selectbox("ResNet50 block", blocks["resnet50"],
                                   index=blocks["resnet50"].index("conv4_block2"))}


def side_by_side():
    shown = [(f"{titles[n]} {b}", ledgers[n][ledgers[n]["block"] == b]) for n, b in pick.items()]
    return blocks_side_by_side(shown), across.block_lesson(shown)


figure, lesson = ui.drawn(("across", "side by side", *pick.items()), side_by_side)
st.plotly_chart(figure)
st.markdown(lesson)

st.header("Lesson 3: EfficientNet adds squeeze-and-excitation, and scales by one formula")
st.markdown(ui.drawn(("across", "se lesson"), lambda: across.se_lesson(ledgers["efficientnet_b0"])))
st.latex(r"d = \alpha^{\phi},\quad w = \beta^{\phi},\quad r = \gamma^{\phi},\qquad"
         r"\text{multiply-adds} \propto d \cdot w^{2} \cdot r^{2},\qquad \alpha\,\beta^{2}\gamma^{2} \approx 2")
st.dataframe(ui.drawn_table(("across", "scaling"), lambda: counts.scaling), hide_index=True, column_config={
    c: st.column_config.NumberColumn(format="localized") for c in ("params", "macs", "predicted_macs",
                                                                    "predicted_by_blocks")})
st.caption("Tan & Le 2019, eq. 3 (α = 1.2, β = 1.1, γ = 1.15 for φ = 1); width, depth and resolution of B1–B7 as "
           "Keras' EfficientNetB1–B7 set them. Every row is built and counted here.")

st.header("Every layer of every network")
name = st.selectbox("network", list(ledgers), format_func=titles.get)
st.dataframe(ui.drawn_table(("across", "ledger", name), lambda: ledgers[name]), hide_index=True, height=360,
             column_config={
    c: st.column_config.NumberColumn(format="localized") for c in ("params", "macs", "bn_statistics")})
st.download_button("Download all seven ledgers (CSV)", counts.csv, "xviz-ledgers-7-networks.csv", "text/csv")
