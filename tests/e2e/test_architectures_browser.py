"""The Across architectures page in a real browser: its charts drawn, a block picked, the networks timed.

A screenshot of the timed page goes to screenshots/e2e_architectures.png (git-ignored): look at it.
Run: python -m pytest tests/e2e/test_architectures_browser.py -q
"""

from __future__ import annotations

from ready import skip_unless_ready

skip_unless_ready()

from playwright.sync_api import expect  # noqa: E402  (after the skips: playwright may be missing)

TIMING_MS = 600_000  # seven networks, two forwards each, on 2 cores shared with the test run
FIRST_VISIT_MS = 300_000  # the first visit on a server builds and counts 15 networks (~6 s of CPU when quiet)


def test_compare_pick_a_block_and_time(app):
    app.act(app.nav_link("Across architectures").click, timeout=FIRST_VISIT_MS)
    main = app.main
    expect(main.locator("h1")).to_have_text("Across architectures")
    assert app.wait_pictures_drawn() == 3  # accuracy vs compute, shares by kind, the blocks side by side
    expect(main.get_by_test_id("stPlotlyChart").first.locator(".textpoint")).to_have_count(7)  # one per network
    expect(main.get_by_text("MobileNetV2 89.1%", exact=False)).to_be_visible()

    picker = main.get_by_test_id("stSelectbox").filter(has_text="MobileNetV2 block")
    picker.get_by_role("button", name="Open").click()
    app.act(app.page.get_by_role("option", name="block_1", exact=True).click)
    expect(main.get_by_text("channels 16 → 96 → 24", exact=False)).to_be_visible()

    rounds = main.get_by_test_id("stSlider").filter(has_text="timed rounds").get_by_role("slider")
    app.act(lambda: (rounds.focus(), rounds.press("Home")))  # 1 round
    button = main.get_by_role("button", name="Time all seven networks", exact=False)
    app.act(button.click, timeout=TIMING_MS)
    expect(main.get_by_text("Measured on CPU", exact=False)).to_be_visible()
    assert app.wait_pictures_drawn() == 4  # + the latency bars
    app.screenshot("architectures")
    app.assert_clean()
