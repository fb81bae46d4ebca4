"""xviz — see how Xception sees an image.  Run: streamlit run app.py

The entrypoint is a frame: page config, the page list, the shared sidebar, then the chosen page.
The sidebar is built after st.navigation and before page.run(), so its widgets (image, model)
keep their state across page switches.
"""

import os

# torch's OpenMP threads spin while they wait for the next op; on a busy server (session threads, other
# processes) a spinning thread holds a core its partner needs and every op waits at the barrier for
# the descheduled one: forwards 3.5-7x slower measured on 2 cores at load ~24 (issue 12's notes).
# libgomp reads this once, when torch loads, so it is set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

from xviz import ui  # noqa: E402

# an emoji favicon is drawn by the browser; a :material/ one is fetched from fonts.gstatic.com (fails offline)
st.set_page_config(page_title="xviz — how Xception sees", page_icon="👁️", layout="wide")
ui.configure_torch()  # torch threads and fp32-on-CUDA, once per server process
ui.start_background_work()  # what every student would otherwise wait for (the zoo's counts), once per process


def pages() -> dict[str, list[st.Page]]:
    """The navigation, built once a session and kept: st.Page resolves its file on disk, ~50 file
    system calls for these nine that each let go of the GIL, and thirty busy sessions rebuilt them
    on every rerun (6 % of the server's samples with bench/load_test.py --all-pages)."""
    return {
        "Look": [
            st.Page("pages/predict.py", title="Predict", icon=":material/label:", default=True),
            st.Page("pages/gradcam.py", title="Where it looks (Grad-CAM)", icon=":material/center_focus_strong:"),
        ],
        "Inside": [
            st.Page("pages/architecture.py", title="Architecture", icon=":material/account_tree:"),
            st.Page("pages/feature_maps.py", title="Feature maps", icon=":material/grid_view:"),
            st.Page("pages/separable.py", title="Separable convolution", icon=":material/call_split:"),
        ],
        "Count": [
            st.Page("pages/parameters.py", title="Parameters and compute", icon=":material/calculate:"),
            st.Page("pages/architectures.py", title="Across architectures", icon=":material/compare_arrows:"),
        ],
        "Class": [
            st.Page("pages/tour.py", title="Guided tour", icon=":material/school:"),
            st.Page("pages/teach.py", title="Teach it new classes", icon=":material/model_training:"),
        ],
    }


if ui.PAGES not in st.session_state:
    st.session_state[ui.PAGES] = pages()
page = st.navigation(st.session_state[ui.PAGES])
ui.sidebar()
page.run()
