"""The registry path under faults: every command that fails changes nothing, in one line, soon.

On a real reduced search and its SQLite MLflow store (the registry as users have it), with faults
made real: a checkpoint swapped on disk, a store locked by another process, an artifact folder that
refuses writes, SIGTERM and Ctrl+C during the upload, two promotions of one name at once, and a
tracking server that answers its health check but 500 to everything else.
"""

import http.server
import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch
from test_promote import EXPERIMENT, MODEL, children, failing, promote, registry_state, searched  # noqa: F401

from conftest import cli, popen_search, run_search

pytestmark = pytest.mark.slow


def store_state(client, workdir):
    """What a failed command must leave as it was: versions and aliases, logged models, staging files, locks."""
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    logged = sorted((m.name, str(m.status)) for m in client.search_logged_models([experiment]))
    staging = sorted(str(p) for p in Path(workdir).rglob(".production-*"))
    locks = [m.name for m in client.search_registered_models() if m.name.endswith(".promotion-lock")]
    return registry_state(client), logged, staging, locks


def by_configuration(client, configuration):
    return next(r for r in children(client) if r.data.tags["configuration"] == configuration)


def unpromoted(client):
    """A configuration no version of MODEL holds yet, and one more."""
    held = {v.tags["configuration"] for v in client.search_model_versions(f"name = '{MODEL}'")}
    return [c for c in ("c000", "c001", "c002") if c not in held]


def test_a_swapped_or_replaced_checkpoint_is_refused_naming_both(searched):  # noqa: F811
    workdir, tracking, client = searched
    other = by_configuration(client, "c002")
    theirs = Path(other.data.tags["checkpoint_uri"]) / "state.pt"
    # Every replicate of c001: promote picks one of them.
    mine = [
        Path(r.data.tags["checkpoint_uri"]) / "state.pt"
        for r in children(client)
        if r.data.tags["configuration"] == "c001"
    ]
    for path in mine:
        shutil.copy(path, path.with_suffix(".bak"))
    try:
        for path in mine:
            shutil.copy(theirs, path)  # another trial's network under this run's name
        failing(
            workdir,
            tracking,
            client,
            "--configuration",
            "c001",
            "--yes",
            expect=f"is child run {other.info.run_id} (configuration c002, seed {other.data.tags['seed']})'s, not",
        )
        for path in mine:
            state = torch.load(path.with_suffix(".bak"), weights_only=True)
            state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
            torch.save(state, path)  # this run's own file, its weights changed
        failing(workdir, tracking, client, "--configuration", "c001", "--yes", expect="the file was replaced")
    finally:
        for path in mine:
            shutil.move(path.with_suffix(".bak"), path)


def test_a_locked_store_is_one_line_naming_the_log(searched):  # noqa: F811
    workdir, tracking, client = searched
    before = store_state(client, workdir)
    database = sqlite3.connect(Path(workdir) / "mlflow.db", isolation_level=None, timeout=1)
    database.execute("BEGIN EXCLUSIVE")  # another process holds the store
    try:
        out = promote(workdir, tracking, "--configuration", "c001", "--yes", fresh=True)
        # history reads the store as MLflow opens it, which logs its own traceback first.
        listed = run_search("history", "--model-name", MODEL, "--tracking-uri", tracking, cwd=workdir)
    finally:
        database.close()
    for refused in (out, listed):
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert refused.stderr.count("\n") == 1 and "database is locked" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    log = Path(listed.stderr.split("the libraries' own log: ")[1].rstrip(")\n"))
    assert log.stat().st_size > 0  # where MLflow's own lines went
    assert store_state(client, workdir) == before


def test_an_artifact_store_that_refuses_writes_leaves_nothing(searched):  # noqa: F811
    workdir, tracking, client = searched
    models = Path(client.get_experiment_by_name(EXPERIMENT).artifact_location.removeprefix("file://")) / "models"
    before = store_state(client, workdir)
    shutil.move(models, models.with_name("models.kept"))
    models.write_text("not a folder")  # refuses every write under it, whoever runs the test (root too)
    try:
        out = promote(workdir, tracking, "--configuration", unpromoted(client)[0], "--yes", "--out", "refused-art")
    finally:
        models.unlink()
        shutil.move(models.with_name("models.kept"), models)
    assert out.returncode == 2 and "promotion failed, registry left as it was" in out.stderr, out.stderr[-2000:]
    assert store_state(client, workdir) == before
    assert not list((Path(workdir) / "refused-art").iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_upload_undoes_the_promotion(searched, signum):  # noqa: F811
    workdir, tracking, client = searched
    configuration = unpromoted(client)[0]
    before = store_state(client, workdir)
    process = popen_search(
        "promote", "--experiment", EXPERIMENT, "--tracking-uri", tracking, "--configuration", configuration,
        "--force", "--yes",
        cwd=workdir,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    # Read the store directly, every 5 ms: the upload lasts about a second.
    pending = "SELECT 1 FROM logged_models WHERE name LIKE ? AND status = 1 AND lifecycle_stage = 'active'"
    while True:
        with sqlite3.connect(Path(workdir) / "mlflow.db", timeout=5) as database:
            if database.execute(pending, (f"{configuration}-seed%",)).fetchone():
                break
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(signum)  # the logged model exists: its upload is under way
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert stderr.splitlines()[-1].startswith("interrupted: promotion interrupted, registry left as it was"), stderr
    assert "Traceback" not in stderr
    assert store_state(client, workdir) == before, stderr


def test_promotions_of_one_name_take_turns_and_a_stale_champion_is_refused(searched, tmp_path):  # noqa: F811
    from orchestrator import tracking as lookup
    from orchestrator.errors import SearchError
    from orchestrator.promotion import choice
    from orchestrator.promotion import promote as promoting
    from orchestrator.promotion.lock import promotion_lock

    workdir, tracking, client = searched
    name = "turns-model"
    search = lookup.find_search(client, EXPERIMENT, status="FINISHED")
    results = lookup.collect(client, search)
    ids = ["c000", "c001", "c002"]
    first = promoting.stage(client, search, choice.by_id(results, "c001", ids), name, "production", tmp_path)
    second = promoting.stage(client, search, choice.by_id(results, "c002", ids), name, "production", tmp_path)
    promoting.promote(client, first, "test", "none")
    # The second was staged (and gated) when the alias was unset: it must not move it now.
    with pytest.raises(SearchError, match="moved from unset to version 1 while this promotion was staged"):
        promoting.promote(client, second, "test", "none")
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert str(client.get_model_version_by_alias(name, "production").version) == "1"

    # One holding the lock makes the next wait, then go.
    held = threading.Event()
    release = threading.Event()

    def holder():
        with promotion_lock(client, name):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(30)
    process = popen_search(
        "promote", "--experiment", EXPERIMENT, "--tracking-uri", tracking, "--configuration", "c002", "--force",
        "--yes", "--model-name", name, "--out", str(tmp_path / "waiting"),
        cwd=workdir,
    )  # fmt: skip
    try:
        line = process.stderr.readline()
        while line and "waiting for the promotion" not in line:
            line = process.stderr.readline()
        assert f"waiting for the promotion of {name} by" in line
    finally:
        release.set()
        thread.join()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert str(client.get_model_version_by_alias(name, "production").version) == "2"
    assert not [m for m in client.search_registered_models() if m.name.endswith(".promotion-lock")]
    assert not list(tmp_path.rglob(".production-*"))


def test_after_the_alias_moved_a_file_that_cannot_be_written_is_a_warning(searched, tmp_path):  # noqa: F811
    from orchestrator import tracking as lookup
    from orchestrator.promotion import choice
    from orchestrator.promotion import promote as promoting

    workdir, tracking, client = searched
    name = "late-file-model"
    search = lookup.find_search(client, EXPERIMENT, status="FINISHED")
    chosen = choice.by_id(lookup.collect(client, search), "c001", ["c000", "c001", "c002"])
    staged = promoting.stage(client, search, chosen, name, "production", tmp_path)
    (tmp_path / "production.yaml").mkdir()  # appears after staging: the rename onto it fails
    (tmp_path / "production.yaml" / "keep").write_text("x")
    done = promoting.promote(client, staged, "test", "none")
    assert done.local_error and "could not write" in done.local_error
    assert client.get_model_version_by_alias(name, "production").version == done.version.version
    assert not list(tmp_path.glob(".production-*"))


def test_a_model_name_mlflow_would_mangle_is_refused(searched):  # noqa: F811
    workdir, tracking, client = searched
    for name, expect in {
        "bell\x07model": r"holds '\x07'",
        "my-model@v2": "holds '@'",
        " padded": "starts or ends with a space",
        "x.promotion-lock": "names promotion locks",
    }.items():
        failing(workdir, tracking, client, "--configuration", "c001", "--yes", "--model-name", name, expect=expect)


class SickServer(http.server.BaseHTTPRequestHandler):
    """A tracking server whose health check answers and whose API fails: a broken database behind it."""

    def answer(self):
        code = 200 if self.path.startswith("/health") else 500
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"OK" if code == 200 else b"Internal Server Error")

    do_GET = do_POST = do_PATCH = do_DELETE = answer

    def log_message(self, *args):
        pass


def test_a_sick_tracking_server_is_answered_in_one_line_within_the_bound(tmp_path):
    from orchestrator.console import HTTP_BOUND_S

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SickServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for command in (
            ["promote", "--experiment", "e", "--configuration", "c000", "--yes"],
            ["evaluate", "--model", "models:/m@production"],
            ["history", "--model-name", "m"],
        ):
            start = time.monotonic()
            out = run_search(*command, "--tracking-uri", uri, cwd=tmp_path)
            took = time.monotonic() - start
            assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
            assert out.stderr.startswith(f"error: the MLflow tracking server {uri} answers HTTP 500"), out.stderr
            assert took < HTTP_BOUND_S, f"{command[0]} took {took:.0f} s"
    finally:
        server.shutdown()
    assert not os.listdir(tmp_path)  # nothing half-written


class SilentServer(SickServer):
    """A tracking server whose health check answers and whose API never does: a stuck worker behind it."""

    def answer(self):
        if self.path.startswith("/health"):
            super().answer()
        else:
            time.sleep(120)  # longer than any read timeout a command should wait

    do_GET = do_POST = do_PATCH = do_DELETE = answer


def test_a_silent_tracking_server_is_given_up_on_after_three_read_timeouts(tmp_path):
    from orchestrator.console import HTTP_SETTINGS

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SilentServer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    read_timeout_s = 3  # the shipped 15 s gives up in about 50 s; the same three tries, shorter
    try:
        start = time.monotonic()
        out = cli(
            "history",
            "--model-name",
            "m",
            "--tracking-uri",
            uri,
            cwd=tmp_path,
            env={"MLFLOW_HTTP_REQUEST_TIMEOUT": str(read_timeout_s)},
            fresh=True,
        )
        took = time.monotonic() - start
    finally:
        server.shutdown()
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert out.stderr.startswith(f"error: the MLflow tracking server {uri} did not answer to api/"), out.stderr
    assert f"within {read_timeout_s} s, on every try" in out.stderr, out.stderr
    tries = int(HTTP_SETTINGS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) + 1
    assert tries * read_timeout_s <= took < tries * read_timeout_s + 30, f"gave up after {took:.0f} s"
