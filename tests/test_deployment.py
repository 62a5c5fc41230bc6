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
    needed = set(re.findall(r"\$\{([A-Z_]+)", (DOCKER / "compose.yaml").read_text()))
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
