"""The deployment files in docker/ agree with the project: Ray and Python versions, entry
commands our CLI accepts, environment variable names the code reads, ports. (Docker and
Kubernetes do not run on these machines: this reads the files, it does not start them.)"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from orchestrator.search.ray_session import FORWARDED_ENV_PREFIXES
from run_search import build_parser
from search_spaces.spec import SearchSpec

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def pinned(package: str) -> str:
    match = re.search(rf'"{re.escape(package)}(\[[^\]]*\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, package
    return match.group(2)


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_the_image_is_rays_own_for_the_pinned_ray_and_python_and_runs_as_non_root():
    lines = [line.split("#")[0].strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    base = next(line for line in lines if line.startswith("FROM ")).split()[1]
    assert base == f"rayproject/ray:{pinned('ray')}-py311-gpu"
    assert "USER ray" in lines
    assert any(line.startswith("RUN pip install") and " . " in f"{line} " for line in lines)
    for folder in ("orchestrator", "search_spaces", "trainables"):
        assert any(line.startswith("COPY") and f" {folder} " in f"{line} " for line in lines), folder


def test_compose_wires_the_services_the_code_expects():
    services = compose()["services"]
    assert {"postgres", "minio", "mlflow", "ray-head", "ray-worker"} <= set(services)
    head, worker, mlflow = services["ray-head"], services["ray-worker"], services["mlflow"]
    assert head["command"].startswith("ray start --head --port=6379") and "--block" in head["command"]
    assert worker["command"] == "ray start --address=ray-head:6379 --block"
    assert "--serve-artifacts" in mlflow["command"] and "postgresql://" in mlflow["command"]
    assert "--port 5000" in mlflow["command"] and "5000:5000" in mlflow["ports"]
    assert head["healthcheck"]["test"] and mlflow["healthcheck"]["test"]
    for service in (head, worker, mlflow):
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        # What a trial needs reaches it through the runtime env the driver forwards.
        for name in env:
            if name.startswith(("AWS_", "MLFLOW_S3_")):
                assert name.startswith(FORWARDED_ENV_PREFIXES), name
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert any(v.endswith(":/shared") for v in head["volumes"]) and head["volumes"] == worker["volumes"]


def test_every_secret_compose_needs_is_in_the_example_env_file():
    # Required ones (${NAME:?...}); ${GIT_COMMIT:-unknown} comes from the building shell.
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", (DOCKER / "compose.yaml").read_text()))
    example = {
        line.split("=", 1)[0]
        for line in (DOCKER / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert needed <= example, needed - example


def test_the_rayjob_runs_a_search_our_cli_and_spec_accept():
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == pinned("ray")
    images = {
        c["image"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for c in group["template"]["spec"]["containers"]
    }
    assert len(images) == 1
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    python, script, *args = shlex.split(job["spec"]["entrypoint"])
    assert (python, script) == ("python", "run_search.py")
    parsed = build_parser().parse_args(args)
    assert parsed.command == "search" and (ROOT / parsed.config).is_file()
    for override in parsed.overrides:
        key = override.split("=", 1)[0].split(".")[0]
        assert key in SearchSpec.model_fields, override
    assert "address=auto" in parsed.overrides


@pytest.mark.parametrize("name", ["compose.yaml", "rayjob.yaml"])
def test_the_files_are_plain_yaml(name):
    assert isinstance(yaml.safe_load((DOCKER / name).read_text()), dict)


# --- the files against their own schemas, offline ------------------------------------------------

KUBERAY_CRD = ROOT.parent / "shared" / "data" / "kuberay" / "ray.io_rayjobs.yaml"


def strict(schema):
    """A CRD schema that refuses unknown fields, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def rayjob_errors(job):
    import jsonschema

    crd = yaml.safe_load(KUBERAY_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == job["apiVersion"].split("/")[1]]
    validator = jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    return [f"{'.'.join(map(str, e.path))}: {e.message[:200]}" for e in validator.iter_errors(job)]


def test_the_rayjob_validates_against_kuberays_own_crd_schema():
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    crd = yaml.safe_load(KUBERAY_CRD.read_text())
    assert crd["spec"]["names"]["kind"] == job["kind"] and crd["spec"]["group"] == job["apiVersion"].split("/")[0]
    assert rayjob_errors(job) == []
    # The check can fail: a misspelt field and a wrong type are both reported.
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    job["spec"]["rayClusterSpec"]["headGroupSpecs"] = job["spec"]["rayClusterSpec"].pop("headGroupSpec")
    errors = "\n".join(rayjob_errors(job))
    assert "shutdownAfterJobFinishes: 'yes' is not of type 'boolean'" in errors and "headGroupSpecs" in errors


def compose_spec_check(path):
    import subprocess
    import sys

    # check-jsonschema ships the Compose specification's own schema (vendor.compose-spec).
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_validates_against_the_compose_specification_schema(tmp_path):
    out = compose_spec_check(DOCKER / "compose.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    broken = compose()
    broken["services"]["mlflow"]["healthcheck"]["retries"] = "many"
    broken["services"]["ray-head"]["shm-size"] = "8gb"
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert compose_spec_check(tmp_path / "compose.yaml").returncode == 1


# --- what a user runs, read as the shell and the containers would --------------------------------


def readme_commands():
    """The docker README's shell commands, continuation lines joined."""
    text = (DOCKER / "README.md").read_text()
    blocks = re.findall(r"^```\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    return [c.strip() for block in blocks for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def test_every_variable_in_a_container_command_is_expanded_where_it_is_set():
    services = compose()["services"]
    checked = 0
    for command in readme_commands():
        match = re.match(r"docker compose -f docker/compose.yaml exec (\S+) (.*)", command)
        if not match:
            continue
        service, rest = match.groups()
        # Outside single quotes the host's shell expands $VAR, where the secrets are not set.
        host_side = re.sub(r"'[^']*'", "", rest)
        assert not re.findall(r"\$[A-Za-z_{]", host_side), command
        for quoted in re.findall(r"'([^']*)'", rest):
            for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", quoted):
                assert name in services[service]["environment"], (name, service)
                checked += 1
    assert checked >= 1  # the search command's $POSTGRES_PASSWORD


def test_the_tracking_server_answers_every_address_the_readme_tells_users_to_type():
    from mlflow.server.security_utils import is_allowed_host_header

    mlflow_service = compose()["services"]["mlflow"]
    assert '--allowed-hosts "$$MLFLOW_ALLOWED_HOSTS"' in mlflow_service["command"]
    assert "MLFLOW_ALLOWED_HOSTS" in mlflow_service["environment"]
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / "env.example").read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    allowed = [host.strip() for host in example["MLFLOW_ALLOWED_HOSTS"].split(",")]
    readme = (DOCKER / "README.md").read_text()
    compose_part = readme.split("## Kubernetes")[0] + readme.split("## Browse and promote")[1]
    typed = set(re.findall(r"https?://([A-Za-z0-9.-]+:5000)", compose_part))
    assert {"localhost:5000", "mlflow:5000"} < typed
    for host in typed:
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example.org:5000")


def test_the_storage_folder_belongs_to_the_images_user_and_the_image_records_its_commit():
    text = (DOCKER / "Dockerfile").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    chown = next(i for i, line in enumerate(lines) if "chown ray:users /shared" in line and "mkdir -p /shared" in line)
    # Made as root, before the image switches to `ray` for good.
    assert lines[max(u for u in users if u < chown)] == "USER root" and lines[users[-1]] == "USER ray"
    assert users[-1] > chown
    services = compose()["services"]
    for name in ("ray-head", "ray-worker"):
        assert any(volume.split(":")[1] == "/shared" for volume in services[name]["volumes"]), name
    # No .git in the image: the commit comes in as a build argument and is read back by provenance.
    assert "ARG GIT_COMMIT=unknown" in lines and "ENV SPARSE_SHAPE_SEARCH_GIT_COMMIT=$GIT_COMMIT" in lines
    assert compose()["x-image"]["build"]["args"]["GIT_COMMIT"] == "${GIT_COMMIT:-unknown}"


def test_outside_a_checkout_the_commit_comes_from_the_image(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    copy = shutil.copy(ROOT / "orchestrator" / "provenance.py", tmp_path / "provenance.py")
    script = f"import runpy; print(runpy.run_path({str(copy)!r})['git_commit']())"
    env = {**os.environ, "SPARSE_SHAPE_SEARCH_GIT_COMMIT": "0123abc", "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "0123abc", out.stderr


def test_every_image_is_pinned():
    for name, service in compose()["services"].items():
        image = service.get("image") or compose()["x-image"]["image"]
        if image.startswith("sparse-shape-search:"):
            continue  # built here
        repository, _, tag = image.partition(":")
        assert tag and tag != "latest", name
        if repository.startswith("minio/"):
            assert tag.startswith("RELEASE."), image
