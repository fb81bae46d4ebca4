"""Build hook: a wheel carries the checkout's Streamlit app as ``xviz/_app`` (``xviz app`` runs it).

The app is written once, at the top of the checkout, where ``streamlit run app.py`` and hosts such
as Streamlit Community Cloud look for it. The wheel gets an exact copy of that folder, so the same
relative paths hold in both places: ``st.Page("pages/…")`` resolves next to app.py, and Streamlit
reads ``.streamlit/config.toml`` next to the script it runs (its "script-level" config), so the
upload limit and XSRF settings stay in one file whatever the working directory. Moving the app
into the package instead would need a second config.toml at the top for ``streamlit run app.py``.

A hook rather than ``force-include`` in pyproject.toml: hatchling would copy force-included files
into editable installs too, where they would be stale copies; an editable install runs the
checkout's app.py itself (``xviz.__main__.app_script``).
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

APP_FILES = {"app.py": "xviz/_app/app.py", "pages": "xviz/_app/pages",
             ".streamlit/config.toml": "xviz/_app/.streamlit/config.toml"}


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"].update(APP_FILES)
