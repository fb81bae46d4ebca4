"""Where the network looks (pages/gradcam.py, xviz.attributions): the map of a method for a class, the
pickers for class and settings, and the two trust checks."""

from __future__ import annotations

import streamlit as st

from xviz.ui.cache import (attribution_deletion, attribution_map, attribution_randomisation, ig_result, layer_table,
                            top_classes)
from xviz.ui.drawn import drawn
from xviz.ui.presenter import colormap, presenter
from xviz.ui.state import Selection

def view_attribution(sel: Selection, target: int, *, method: str = "gradcam", layer: str | None = None,
                     compare=(), options: dict | None = None, key: str = "gc", controls: bool = True) -> None:
    """The map of ``method`` for class ``target`` over the picture the model saw (side by side with the
    methods in ``compare``), and how to read it.

    With ``controls``: view, opacity and colours are widgets (``{key}_view``, ``{key}_alpha``,
    ``{key}_cmap``) and the picture can be downloaded; without, an overlay at opacity 0.5.
    """
    import dataclasses

    from xviz import attributions as A
    from xviz.figures import attribution as F
    from xviz.figures import toolkit as T

    model, size = sel.model, sel.model.input_size
    layer, options = layer or A.DEFAULT_LAYER, options or {}
    spec = A.METHODS[method]
    view, alpha, cmap = "Overlay", 0.5, colormap("heat")
    if controls:
        c0, c1, c2 = st.columns([2, 3, 2])
        view = c0.radio("View", ["Overlay", "Heatmap only"], horizontal=True, key=f"{key}_view")
        alpha = c1.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key=f"{key}_alpha", disabled=view != "Overlay")
        if not presenter():
            cmap = c2.selectbox("Colours", T.COLORMAPS, T.COLORMAPS.index(cmap), key=f"{key}_cmap")
    shapes = {r.name: r for r in layer_table(model)}
    shown_size = max(size, 448)

    label = model.labels[target]
    chosen = [method, *compare]
    titles = [A.METHODS[n].title for n in chosen]
    # the maps first, each waited for with its place in line; then the picture, drawn once (ui.drawn)
    heats = {n: attribution_map(sel, n, layer, target, tuple(sorted(options.items())) if n == method else ())
             for n in chosen}

    def picture(name, seen):
        heat = heats[name]
        m = A.METHODS[name]
        look = dict(cmap=cmap, signed=m.signed, percentile=100.0 if m.uses_layer else 99.5)
        # pixel-level maps are sparse: let their near-zero pixels show the photo (fade)
        return (F.heatmap_overlay(seen, heat, alpha=alpha, fade=m.signed or not m.uses_layer, **look) if view == "Overlay"
                else F.heatmap_image(heat, size=shown_size, **look))

    def draw():
        # the picture the model saw, cropped the same way but drawn at a readable size (not upscaled pixels)
        seen = dataclasses.replace(model.preprocessing, size=shown_size, resize="bilinear").resized(sel.image)
        pictures = [picture(n, seen) for n in chosen]
        image = F.side_by_side(pictures, titles, font_size=24) if compare else pictures[0]
        image.setflags(write=False)
        return image, T.jpeg_bytes(image)

    image, jpeg = drawn(("attribution", sel.key, tuple(chosen), layer, target, tuple(sorted(options.items())),
                         view, alpha, cmap), draw)
    caption = (f"{' · '.join(titles)} for **{label}**"
               + (f" at {layer}" if any(A.METHODS[n].uses_layer for n in chosen) else "")
               + (". Red: evidence for the class, blue: against." if any(A.METHODS[n].signed for n in chosen)
                  else "."))
    pic, note = (st.container(), st.container()) if compare else st.columns([3, 2])
    pic.image(jpeg, width="stretch", caption=caption, output_format="JPEG")
    if spec.uses_layer and layer in shapes:
        note.markdown(f"**How to read it.** Warm colours: places that raised the score of **{label}**; cold: "
                      f"little or nothing. {spec.title} is computed on the {shapes[layer].height}×"
                      f"{shapes[layer].width} grid of `{layer}` and stretched over the photo: that is why it "
                      "is smooth." + (" Slide to an earlier layer for a sharper, less class-specific map."
                                      if controls else ""))
    else:
        note.markdown(f"**How to read it.** {spec.summary} The map has one value per input pixel "
                      f"({size}×{size}); the colours are scaled to its 99.5th percentile so a few extreme "
                      "pixels don't wash out the rest.")
    if "integrated_gradients" in chosen:
        opts = tuple(sorted(options.items())) if method == "integrated_gradients" else ()
        fine, text = completeness_reading(ig_result(sel, target, opts))
        (note.success if fine else note.warning)(text)
    if controls and not presenter():
        settings = {"method": "+".join(chosen), "layer": layer, "class": label, "view": view.split()[0],
                    "alpha": alpha, "cmap": cmap, "size": size, "image": sel.image_key[:8]}
        # encoded on click only (a callable), not on every rerun of the page
        note.download_button("Download this picture (PNG)", lambda: T.png_bytes(image, settings),
                             F.png_filename(settings), "image/png", key=f"{key}_png")


BASELINE_NAMES = {"grey": "mid-grey", "black": "black", "blurred": "your photo, blurred"}


def completeness_reading(result) -> tuple[bool, str]:
    """(fine?, one paragraph): does the IG map add up to the score difference, in a student's words."""
    base = BASELINE_NAMES.get(result.baseline, f"the constant {result.baseline}")
    how = (f"{result.steps} steps along the path" if result.tolerance is None
           else f"{result.steps} steps, refined until it added up within {result.tolerance:.0%}")
    if result.completeness_error != result.completeness_error:
        return False, (f"**Adds up?** The class score hardly changes between the {base} image and your photo "
                       f"({result.score_difference:+.3g}), so there is nothing for the colours to add up to: "
                       "try another reference image.")
    text = (f"**Adds up?** The colours sum to {result.attribution_sum:.3f}; the score rises by "
            f"{result.score_difference:.3f} from the {base} image to your photo"
            + (f" (both averaged over {result.samples} noisy copies)" if result.samples else "")
            + f": they agree within {result.completeness_error:.1%} ({how}).")
    fine = result.completeness_error <= (result.tolerance or 0.01)
    if not fine:
        text += (" That is more than 1 %, so read fine differences between pixels with care"
                 + (": more steps would make it add up." if result.tolerance is None else
                    f": the path was refined as far as the time allowed ({result.steps} steps)."))
    return fine, text


SLOW_CASCADE = ("head", "block14", "block13", "block12", "block8", "block4", "block1")  # 7 maps, not 15


def pick_attribution_target(sel: Selection, where=st, *, key: str = "gc") -> int:
    """The class to explain: one of the top guesses, or any label by search. Returns its index."""
    model = sel.model
    top = top_classes(sel, min(5, len(model.labels)))
    if where.toggle("Any class (search by name)", key=f"{key}_any",
                    help="Off: the model's top guesses. On: every class it knows; type to search."):
        return where.selectbox("Class to explain", range(len(model.labels)), format_func=model.labels.__getitem__,
                               index=top[0][0], key=f"{key}_label")
    probs = {index: p for index, _, p in top}
    return where.selectbox("Class to explain", list(probs), key=f"{key}_top",
                           format_func=lambda i: f"{model.labels[i]} ({probs[i]:.0%})")


def attribution_options(method: str, size: int, *, key: str = "gc") -> dict:
    """Widgets for the settings of a slow method (steps, noisy copies, window); {} for fast ones."""
    from xviz import attributions as A

    if not A.METHODS[method].slow:
        return {}
    options = {}
    with st.expander("Settings of this slow method", expanded=False):
        if method == "integrated_gradients":
            options["baseline"] = st.radio(
                "Start the path from", A.IG_BASELINES, horizontal=True, key=f"{key}_ig_baseline",
                format_func=BASELINE_NAMES.__getitem__,
                help="IG explains the score difference between this reference image and your photo.")
            refine = st.toggle(f"Refine until the map adds up within {A.IG_TOLERANCE:.0%}", True, key=f"{key}_ig_auto",
                               help="Off: a fixed number of steps, and the page shows how far off the sum is.")
            if not refine:
                options["steps"] = st.slider("Steps from the reference to the image", 2, 64, 16, key=f"{key}_steps")
            options["smooth_samples"] = st.slider("SmoothGrad noisy copies (0: off)", 0, 8, 0, key=f"{key}_ig_smooth")
        elif method == "occlusion":
            window, _ = A.occlusion_window(size)
            options["window"] = st.slider("Grey square (px)", 4, size // 2, window, key=f"{key}_window")
        elif method == "smoothgrad":
            options["samples"] = st.slider("Noisy copies", 2, 32, 16, key=f"{key}_samples")
    return options


def view_attribution_trust(sel: Selection, method: str, layer: str, target: int, options: tuple = ()) -> None:
    """Deletion curve and model-randomisation check of one map, each with a one-line reading."""
    from xviz import attributions as A
    from xviz.figures import attribution as F
    from xviz.figures import toolkit as T

    spec = A.METHODS[method]
    if method == "integrated_gradients":  # IG has a check of its own: completeness
        left, right, third = st.columns(3)
        fine, text = completeness_reading(ig_result(sel, target, options))
        third.markdown("**Completeness**: IG's colours must add up to how much the class score changes "
                       "between the reference image and your photo (Sundararajan et al., 2017).")
        (third.success if fine else third.warning)(text)
    else:
        left, right = st.columns(2)
    curve = attribution_deletion(sel, method, layer, target, options)
    left.plotly_chart(F.deletion_figure(curve, title="Deletion: most relevant patches first"), width="stretch")
    if curve.faithful:
        left.success(f"**Reading:** the probability falls faster when the map's top patches go first (area "
                     f"{curve.area_relevant:.2f} vs {curve.area_random:.2f} for random order): the map points "
                     "at evidence the model really uses.")
    else:
        left.warning(f"**Reading:** on this image, greying out the map's top patches first lowers the "
                     f"probability no faster than random patches (area {curve.area_relevant:.2f} vs "
                     f"{curve.area_random:.2f}): here the map is not a reliable guide to the evidence.")
    check = attribution_randomisation(sel, method, layer, target, options, SLOW_CASCADE if spec.slow else None)
    right.plotly_chart(F.randomisation_figure(check, title="Randomisation: weights scrambled from the top"),
                       width="stretch")
    last = check.spearman[-1]
    if last != last or abs(last) < 0.5:
        right.success("**Reading:** with random weights the map " + ("goes blank" if last != last else
                      f"no longer resembles the original (ρ = {last:.2f})") + ": it depends on what the network "
                      "learned, as an explanation should.")
    else:
        right.warning(f"**Reading:** the map still resembles the original with random weights (ρ = {last:.2f}): "
                      "it shows the image's structure more than the model's reasoning.")
    picks = [i for i, s in enumerate(check.stages) if s in ("head", "block13", "block8", "block4", "block1")]
    look = dict(cmap=colormap("heat"), signed=spec.signed, percentile=100.0 if spec.uses_layer else 99.5)
    strip = [F.heatmap_image(check.original, **look)] + [F.heatmap_image(check.maps[i], **look) for i in picks]
    titles = ["trained"] + [f"random to {check.stages[i]}" for i in picks]
    st.image(T.jpeg_bytes(F.side_by_side(strip, titles, font_size=12)), width="stretch", output_format="JPEG",
             caption="The same map as more and more of the network is scrambled, from the head down (each "
                     "on its own colour scale; an all-dark tile is a blank map: nothing left to rank).")
