"""AppTest of the Feature maps, Separable convolution and Architecture pages with a real photo and
the real demo model (the app's default example image, at the model's 150 px)."""

from streamlit.testing.v1 import AppTest

from helpers import image_captions, image_formats, mentions


def text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.success]
    parts += [e.value for e in at.error] + [m.value for m in at.get("metric")]
    return "\n".join(str(p) for p in parts)


def test_feature_maps_page(open_app):
    at = open_app("pages/feature_maps.py")
    assert not at.exception
    assert at.selectbox(key="fm_block").value == "block1"
    assert at.selectbox(key="fm_layer").value == "block1_conv2_act"
    body = text(at)
    assert "72×72×64" in body  # block1_conv2_act at 150 px
    assert "Zeros after ReLU" in str([m.label for m in at.get("metric")])
    # the grid is sent as the PNG it was encoded to (given bytes and no format, st.image would
    # decode it and send a JPEG, with ringing around every enlarged map pixel)
    assert [f for caption, f in image_formats(at).items() if "64 of 64 channels" in caption] == ["png"]
    # a middle-flow block: its residual sum is checked on screen
    at.radio(key="fm_flow").set_value("middle_flow").run()
    at.selectbox(key="fm_block").set_value("block7").run()
    assert not at.exception
    assert at.selectbox(key="fm_layer").value == "block7_add"
    body = text(at)
    assert "9×9×728" in body and "✓" in body and "✗" not in body  # the residual sum holds
    # changing the sort, the scale and the channel reuses the capture
    at.selectbox(key="fm_sort").set_value("sparsity").run()
    at.radio(key="fm_norm").set_value("shared").run()
    at.toggle(key="fm_overlay").set_value(True).run()
    assert not at.exception
    assert mentions(image_captions(at), "128", "728", "sparsity")
    # an entry-flow block: the shortcut is a strided 1×1 conv, the channel beyond the input's 64
    at.radio(key="fm_flow").set_value("entry_flow").run()
    at.selectbox(key="fm_block").set_value("block2").run()
    at.number_input(key="fm_res_channel").set_value(100).run()
    assert not at.exception
    assert mentions(image_captions(at), "shortcut", "1×1", "block1_conv2_act", "block2_residual_bn", "100")
    assert "✓" in text(at) and "✗" not in text(at)


def test_separable_page_checks_the_pointwise_sum(open_app):
    at = open_app("pages/separable.py")
    assert not at.exception
    assert at.selectbox(key="sep_name").value == "block5_sepconv1"
    assert mentions([s.value for s in at.success], "✓")  # the pointwise sum holds
    assert mentions(text(at), "728 input channels", "728 depthwise maps")
    at.selectbox(key="sep_name").set_value("block2_sepconv1").run()
    assert not at.exception
    body = text(at)
    assert mentions(body, "64 input channels", "64 depthwise maps")
    assert mentions([s.value for s in at.success], "✓")
    assert any("BN" in latex.value for latex in at.get("latex"))


def test_architecture_page_links_to_maps(open_app):
    at = open_app("pages/architecture.py")
    assert not at.exception
    body = text(at)
    assert body.count("20,806,952") == 2  # the flows' parameters, computed, equal the paper's
    rows = at.dataframe[0].value
    assert list(rows["block"])[:3] == ["block1", "block2", "block3"]
    assert rows.set_index("block").loc["block14", "output"] == "5×5×2048"  # 150 px input
    at.selectbox(key="arch_block").set_value("block9").run()
    at.button[0].click().run()
    assert not at.exception
    assert at.selectbox(key="fm_block").value == "block9"
    assert at.selectbox(key="fm_layer").value == "block9_add"
