"""AppTest of the Across architectures page: the seven networks counted, the lessons computed, the
widgets, the download and the timing button; the progress while the networks are counted, and a
counting error."""

import threading

import pytest

from helpers import mentions
from xviz import zoo

PAGE = "pages/architectures.py"


@pytest.fixture
def page(open_app):
    return open_app(PAGE, timeout=600)  # the timing test runs seven networks on a shared machine


def widget(elements, label: str):
    return next(e for e in elements if e.label.startswith(label))


def test_networks_counted_and_lessons_shown(page):
    assert not page.exception
    table = page.dataframe[0].value
    assert list(table["network"]) == [zoo.SPECS[n].title for n in zoo.NAMES]
    assert dict(zip(table["network"], table["parameters"])) == {
        "Xception": 22_855_952, "InceptionV3": 23_817_352, "ResNet50": 25_583_592, "VGG16": 138_357_544,
        "MobileNet": 4_231_976, "MobileNetV2": 3_504_872, "EfficientNetB0": 5_288_548}
    assert "ms per image" not in table  # not timed yet
    assert mentions([c.value for c in page.caption], "Keras Applications", "keras.io/api/applications",
                    "299 px: Xception, InceptionV3", "224 px: ResNet50")
    assert len(page.get("plotly_chart")) == 3  # accuracy vs compute, shares by kind, the blocks
    text = [m.value for m in page.markdown]
    assert mentions(text, "Xception 90.6%", "MobileNet 94.9%", "MobileNetV2 89.1%", "EfficientNetB0 87.7%")
    assert mentions(text, "160 → 960 → 160", "728 throughout", "1024 → 256 → 1024")  # V2, Xception, ResNet50
    scaling = page.dataframe[1].value
    assert list(scaling["variant"]) == [f"EfficientNet{v}" for v in zoo.EFFICIENTNET_SCALING]
    assert r"\alpha\,\beta^{2}\gamma^{2} \approx 2" in page.latex[0].value


def test_block_pickers_and_ledger_of_every_network(page):
    widget(page.selectbox, "MobileNetV2 block").set_value("block_1")
    widget(page.selectbox, "network").set_value("vgg16")
    at = page.run()
    assert not at.exception
    assert mentions([m.value for m in at.markdown], "16 → 96 → 24")
    ledger = at.dataframe[-1].value
    assert ledger["layer"].iloc[0] == "block1_conv1" and ledger["params"].sum() == 138_357_544
    download = at.get("download_button")[0]
    assert download.proto.label == "Download all seven ledgers (CSV)"


def test_timing_runs_when_asked_and_says_how(page):
    assert any("Not timed yet" in i.value for i in page.info)
    widget(page.select_slider, "timed rounds").set_value(1)
    at = widget(page.button, "Time all seven networks").click().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert (table["ms per image"] > 0).all() and (table["ms per GMAC"] > 0).all()
    assert len(at.get("plotly_chart")) == 4
    assert mentions([m.value for m in at.markdown], "MobileNetV2 has 28× fewer multiply-adds than Xception")
    assert mentions([c.value for c in at.caption], "Measured on CPU", "random weights", "load average", "median of 1")


def test_progress_shown_while_the_networks_are_counted_then_the_page(open_app, monkeypatch):
    """The counts are made once per server in the background: a student who opens the page before
    they are done sees their progress live, then the page. Deterministic: the counting stops after
    the fourth network until the page has shown "4 of 7"."""
    from streamlit.delta_generator import DeltaGenerator

    from xviz.ui import background, cache

    shown, seen_four = [], threading.Event()
    progress_bar = DeltaGenerator.progress

    def spy(self, value, text=None, **kwargs):  # the real st.progress, recorded
        shown.append((value, text))
        if text and "4 of 7 done" in text:
            seen_four.set()
        return progress_bar(self, value, text=text, **kwargs)

    def gated(progress):
        def step(done, total):
            progress(done, total)
            if done == 4:
                assert seen_four.wait(60), shown  # until the page has shown it
        return cache._count_zoo(step)

    monkeypatch.setattr(DeltaGenerator, "progress", spy)
    monkeypatch.setattr(cache, "ZOO_COUNTS", background.Task(gated, cache._zoo_progress, "Counting failed"))
    at = open_app(PAGE, timeout=600)  # app.py starts the counting; the page waits for it, visibly
    assert not at.exception
    texts = [t for _, t in shown]
    assert "Counting the seven networks layer by layer, once for the whole class: 4 of 7 done…" in texts
    assert any("Counting EfficientNet-B0 to B7 for the scaling lesson" in t for t in texts)
    assert [v for v, _ in shown] == sorted(v for v, _ in shown)  # it only moves forward
    assert not at.get("progress")  # gone once done: the page instead
    assert list(at.dataframe[0].value["network"]) == [zoo.SPECS[n].title for n in zoo.NAMES]


def test_a_counting_error_is_a_sentence_with_what_to_do(open_app, monkeypatch):
    from xviz.ui import background, cache

    def fails(progress):
        raise MemoryError("not enough memory to build VGG16")

    monkeypatch.setattr(cache, "ZOO_COUNTS", background.Task(fails, cache._zoo_progress,
                                                             "The seven networks could not be counted on this server"))
    at = open_app(PAGE)
    assert not at.exception and not at.dataframe
    assert mentions([e.value for e in at.error], "The seven networks could not be counted",
                    "not enough memory to build VGG16", "Reload the page")


def test_one_timing_at_a_time_on_the_server_a_second_click_joins_it(monkeypatch):
    # seven networks on the CPU hold ~0.9 GB: a class clicking at once must not build them thirty times
    from xviz import across
    from xviz.ui import cache

    release, calls = threading.Event(), []

    def time_networks(rounds, progress):  # the timing itself is tested above; here only who runs it
        calls.append(rounds)
        assert release.wait(60)
        return f"{rounds} rounds"

    monkeypatch.setattr(across, "time_networks", time_networks)
    monkeypatch.setattr(cache, "_timing", None)
    first = cache.timing_task(3)
    assert cache.timing_task(5) is first  # a click while it runs joins it
    release.set()
    assert first.outcome(60) == ("3 rounds", None)
    again = cache.timing_task(5)  # a click after it: a new timing
    assert again is not first and again.outcome(60) == ("5 rounds", None) and calls == [3, 5]
