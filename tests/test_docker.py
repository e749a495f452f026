"""The container, checked in a real Docker engine as a user would check it.

The image is built once for this module from the repository's Dockerfile on the stand-in base image
(see docker_support: nothing can be pulled here). Containers run with --network host against a real
tor (DisableNetwork 1, password auth on 127.0.0.1) and a real VictoriaMetrics standing in for
InfluxDB 2 on 127.0.0.1. Every container and image made here is removed afterwards, on failure too;
the stand-in base image is kept for the next run.

Run as root (the tests start dockerd when no engine answers); as another user without a running
engine these tests are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import docker_support as ds
from support import ROOT, Tor, wait_for

pytestmark = pytest.mark.timeout(900)
docker = pytest.mark.docker  # every test but the compose one needs an engine

ORG, BUCKET, TOKEN = "docker-org", "docker-bucket", "docker-token-not-a-secret"
BUILD_ARGS = {"VERSION": "9.9.9-test", "REVISION": "0123456789abcdef0123456789abcdef01234567",
              "CREATED": "2026-01-02T03:04:05Z"}
MAX_ADDED_BYTES = 20 * 1000 * 1000
DEFAULT_PERIOD, DEFAULT_TOR_TIMEOUT = 10, 5  # the daemon's defaults (README)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = ds.Engine(tmp_path_factory.mktemp("dockerd"))
    try:
        eng.ensure()
    except ds.DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def base_image(engine, tmp_path_factory):
    try:
        return ds.ensure_base_image(log_dir=tmp_path_factory.mktemp("base"))
    except ds.DockerUnavailable as exc:
        pytest.skip(str(exc))


class Built:
    def __init__(self, tag: str, seconds: float, added: int, base: str, output: str):
        self.tag, self.seconds, self.added, self.base, self.output = tag, seconds, added, base, output

    @property
    def inspect(self) -> dict:
        return ds.image_inspect(self.tag)


@pytest.fixture(scope="module")
def image(base_image):
    tag = ds.unique_name("tor2influxdb2-test") + ":test"
    before = ds.image_ids()
    try:
        seconds, output = ds.build_image(tag, base_image, BUILD_ARGS)
        added = ds.image_inspect(tag)["Size"] - ds.image_inspect(base_image)["Size"]
        figures = (f"docker image: built in {seconds:.1f} s, adds {added / 1e6:.1f} MB "
                   f"({added} bytes) over its base {base_image}")
        print(f"\n{figures}")
        out = os.environ.get("TOR2INFLUXDB2_DOCKER_FIGURES")
        if out:
            Path(out).write_text(figures + "\n")
        yield Built(tag, seconds, added, base_image, output)
    finally:
        ds.remove_image(tag)
        ds.remove_build_leftovers(before)


@pytest.fixture
def containers(image):
    """Factory run(env, *args, options=(), mounts=[]) -> the name of a container started with
    `docker run -d --network host`; every one is removed afterwards (SIGCONT first if frozen)."""
    started: list[str] = []
    frozen: list[int] = []

    def run(env: dict[str, str] | None = None, *cmd: str, options: tuple[str, ...] = (),
            mounts: list[tuple[str, str]] | None = None) -> str:
        name = ds.unique_name("t2i")
        started.append(name)
        ds.docker("run", "-d", "--name", name, "--network", "host", *options,
                  *ds.run_args(env, mounts), image.tag, *cmd)
        return name

    run.frozen = frozen
    yield run
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    for name in started:
        ds.remove_container(name)


def influx_env(victoria, **extra) -> dict[str, str]:
    return {"INFLUX_URL": victoria.url, "INFLUX_ORGANIZATION": ORG, "INFLUX_BUCKET": BUCKET,
            "INFLUX_TOKEN": TOKEN, **extra}


def fast(**extra) -> dict[str, str]:
    """A short period so a test does not wait 10 s per cycle (the image's timings are checked
    for the default period separately)."""
    return {"RUN_EVERY_SECONDS": "2", "TOR_TIMEOUT": "1.5", **extra}


def tag_name(prefix: str) -> str:
    return ds.unique_name(prefix).replace("-", "_")


def wait_points(victoria, host: str, timeout: float = 20) -> list:
    return wait_for(lambda: victoria.samples("traffic_read", host=host), timeout,
                    interval=0.5, what=f"traffic_read points of host={host} in VictoriaMetrics")


# --------------------------------------------------------------------------- the image itself

@docker
def test_image_adds_at_most_20_mb_over_its_base(image):
    assert image.added <= MAX_ADDED_BYTES, (
        f"the image adds {image.added / 1e6:.1f} MB over {image.base}; the limit is 20 MB")


@docker
def test_oci_labels_are_filled_from_build_args(image):
    labels = image.inspect["Config"].get("Labels") or {}
    prefix = "org.opencontainers.image."
    for key in ("title", "description", "source", "version", "revision", "created", "licenses"):
        assert labels.get(prefix + key), f"label {prefix}{key} missing or empty: {labels}"
    assert labels[prefix + "title"] == "tor2influxdb2"
    assert labels[prefix + "version"] == BUILD_ARGS["VERSION"]
    assert labels[prefix + "revision"] == BUILD_ARGS["REVISION"]
    assert labels[prefix + "created"] == BUILD_ARGS["CREATED"]


@docker
def test_image_user_is_a_fixed_numeric_user_that_is_not_root(image):
    user = image.inspect["Config"].get("User", "")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"image user {user!r} is not a numeric non-root user"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"image group {user!r} is root or not numeric"


@docker
def test_image_bakes_in_no_secret_or_placeholder(image):
    env = dict(e.split("=", 1) for e in image.inspect["Config"].get("Env") or [])
    for name in ("INFLUX_TOKEN", "INFLUX_TOKEN_FILE", "TOR_HOSTS", "TOR_HOSTS_FILE", "INFLUX_URL",
                 "INFLUX_HOST", "INFLUX_PORT", "INFLUX_ORGANIZATION", "INFLUX_BUCKET"):
        assert name not in env, f"the image sets {name}={env.get(name)!r}: a missing setting would look set"
    # ... so a container given nothing says what is missing and exits 2 (bad configuration).
    proc = ds.docker("run", "--rm", "--network", "host", image.tag, check=False, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "TOR_HOSTS" in proc.stderr and "INFLUX_TOKEN" in proc.stderr, proc.stderr


@docker
def test_build_context_holds_only_what_the_image_needs(image, base_image):
    """.dockerignore: the context a `docker build .` sends has no tests, bench, .git or caches."""
    tag = ds.unique_name("tor2influxdb2-ctx") + ":test"
    before = ds.image_ids()
    listing = ("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /ctx/\n"
               "RUN cd /ctx && echo \"context: $(find . -mindepth 1 | sort | tr '\\n' ' ')\"\n")
    try:
        _, output = ds.build_image(tag, base_image, dockerfile=listing, no_cache=True)
    finally:
        ds.remove_image(tag)
        ds.remove_build_leftovers(before)
    found = re.search(r"^(?:#\d+ [\d.]+ )?context: (.*)$", output, re.M)
    assert found, output
    names = sorted(n.removeprefix("./") for n in found.group(1).split())
    package = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tor2influxdb2").rglob("*")
                     if "__pycache__" not in p.parts)
    assert names == sorted(["healthcheck.sh", "requirements.txt", "tor_to_influxdb2.py", "tor2influxdb2", *package]), names


@docker
def test_dockerfile_healthcheck_timings_meet_15_s_and_45_s(image):
    """With the default period (10 s) and TOR_TIMEOUT (5 s): healthy within 15 s of start,
    unhealthy within 45 s of a fault, worst cases computed from the image's HEALTHCHECK."""
    hc = image.inspect["Config"]["Healthcheck"]
    assert hc["Test"][0] == "CMD", f"HEALTHCHECK is not in exec form: {hc['Test']}"
    assert any(part.endswith("healthcheck.sh") for part in hc["Test"][1:]), hc["Test"]
    interval, timeout = hc["Interval"] / 1e9, hc["Timeout"] / 1e9
    start_period, retries = hc.get("StartPeriod", 0) / 1e9, hc["Retries"]
    probe = 0.5  # seconds one healthcheck.sh run takes at most, generously (measured: a few ms)
    # Healthy: the first cycle runs at start and has written OK after start-up (~1 s) + TOR_TIMEOUT.
    ok_written = 1 + DEFAULT_TOR_TIMEOUT
    first_probe_after_ok = -(-ok_written // interval) * interval  # probes at interval, 2*interval, ...
    healthy_by = first_probe_after_ok + probe
    assert healthy_by <= 15, f"worst case healthy after {healthy_by} s (> 15 s): {hc}"
    # Unhealthy: `retries` failing probes in a row, `interval` (+ probe time) apart.
    failing_probes = retries * (interval + probe)
    # a) tor/InfluxDB fails: the next cycle (<= 1 period away) writes FAILED after <= TOR_TIMEOUT.
    failed_by = DEFAULT_PERIOD + DEFAULT_TOR_TIMEOUT + failing_probes
    # b) the daemon hangs: its last OK (written at or before the fault) turns stale once it is more
    #    than 3 periods old, in whole seconds: at most 3 periods + 1 s after the fault.
    stale_by = 3 * DEFAULT_PERIOD + 1 + failing_probes
    # Failures inside the start period do not count; a fault right after start must still be seen.
    worst = max(failed_by, stale_by, start_period + failing_probes)
    assert worst <= 45, f"worst case unhealthy after {worst} s (> 45 s): {hc}"
    print(f"\nHEALTHCHECK worst cases: healthy after {healthy_by} s, unhealthy after {worst} s")
    assert timeout < interval, f"probe timeout {timeout} s should be below the interval {interval} s"


# --------------------------------------------------------------------------- a plain `docker run`

class Plain:
    """One container as a newcomer runs it: plain `docker run -d` (default user, default period of
    10 s, the image's own HEALTHCHECK) against a real tor and VictoriaMetrics. Several tests look
    at it; each first makes sure it is running and healthy (the docker stop test stops it)."""

    def __init__(self, image: Built, victoria, tor: Tor):
        self.image, self.victoria, self.tor = image, victoria, tor
        self.host = tag_name("dk_plain")
        self.name: str | None = None
        self.first_healthy_after: float | None = None

    def start(self) -> None:
        self.name = ds.unique_name("t2i-plain")
        ds.docker("run", "-d", "--name", self.name, "--network", "host",
                  *ds.run_args(influx_env(self.victoria, TOR_HOSTS=self.tor.entry(self.host))), self.image.tag)
        ds.wait_health(self.name, "healthy", timeout=30)
        self.first_healthy_after = ds.seconds_to_healthy(self.name)

    def ready(self) -> str:
        """The container, running and healthy (started again if a test stopped it)."""
        if self.tor.proc is None:
            self.tor.start()
        if not ds.container_state(self.name).get("Running"):
            ds.docker("start", self.name)
        ds.wait_health(self.name, "healthy", timeout=30)
        return self.name


@pytest.fixture(scope="module")
def plain(image, victoria, tmp_path_factory):
    tor = Tor(tmp_path_factory.mktemp("plain-tor"), auth="password", control="tcp4").start()
    p = Plain(image, victoria, tor)
    try:
        p.start()
        yield p
    finally:
        if p.name:
            ds.remove_container(p.name)
        tor.stop()


@docker
def test_plain_run_turns_healthy_within_15_s_and_points_arrive(plain):
    name = plain.ready()
    assert plain.first_healthy_after <= 15, (
        f"healthy {plain.first_healthy_after:.1f} s after start (the promise: within 15 s)")
    status, probe = ds.health(name)
    assert probe.startswith("HEALTHY"), probe
    assert wait_points(plain.victoria, plain.host), "no points in VictoriaMetrics"
    print(f"\nhealthy {plain.first_healthy_after:.1f} s after start")


@docker
def test_the_daemon_runs_as_the_images_non_root_user(plain, image):
    name = plain.ready()
    out = ds.docker("exec", name, "id", "-u").stdout.strip()
    assert out == image.inspect["Config"]["User"].split(":")[0] and out != "0", out
    # the daemon itself (PID 1), not just a shell started beside it
    status = ds.docker("exec", name, "cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
    assert uids == out, status


@docker
def test_plain_run_keeps_its_buffer_in_buffer_dir(plain):
    """The fixed user can write BUFFER_DIR (/var/lib/tor2influxdb2): no memory fallback."""
    name = plain.ready()
    assert "not writable" not in ds.logs(name)
    listing = ds.docker("exec", name, "ls", "-A", "/var/lib/tor2influxdb2").stdout.split()
    assert listing, "the daemon wrote nothing in BUFFER_DIR /var/lib/tor2influxdb2"


@docker
def test_old_healthcheck_of_watchtower_recreated_containers_still_works(plain):
    """Containers that Watchtower recreated keep the original image's `grep OK /healthcheck`."""
    name = plain.ready()
    legacy = ds.docker("exec", name, "grep", "OK", "/healthcheck", check=False)
    assert legacy.returncode == 0, f"`grep OK /healthcheck` failed: {legacy.stdout}{legacy.stderr}"


@docker
def test_tor_stopped_turns_the_container_unhealthy_within_45_s(plain):
    name = plain.ready()
    plain.tor.stop()
    fault = time.monotonic()
    ds.wait_health(name, "unhealthy", timeout=45)
    took = time.monotonic() - fault
    status, probe = ds.health(name)
    assert probe.startswith("UNHEALTHY") and plain.host in probe, probe
    print(f"\nunhealthy {took:.1f} s after tor stopped")
    plain.tor.start()  # same port: the daemon reconnects and the container recovers
    ds.wait_health(name, "healthy", timeout=30)


@docker
def test_docker_stop_ends_it_in_under_3_s_with_exit_code_0(plain):
    name = plain.ready()
    started = time.monotonic()
    ds.docker("stop", name, timeout=30)
    took = time.monotonic() - started
    state = ds.container_state(name)
    assert took < 3, f"docker stop took {took:.1f} s (SIGTERM did not end the daemon quickly)"
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    print(f"\ndocker stop took {took:.2f} s")


# --------------------------------------------------------------------------- other ways to run it

@docker
def test_frozen_daemon_turns_unhealthy(containers, make_tor, victoria):
    """SIGSTOP the daemon (from the host: `docker pause` would freeze the probe too): its last OK
    goes stale after 3 periods and the container turns unhealthy; SIGCONT -> healthy again."""
    tor = make_tor(auth="password", control="tcp4")
    name = containers(influx_env(victoria, TOR_HOSTS=tor.entry(tag_name("dk_frozen")), **fast()))
    ds.wait_health(name, "healthy", timeout=30)
    pid = ds.host_pid(name)
    containers.frozen.append(pid)
    os.kill(pid, signal.SIGSTOP)
    frozen = time.monotonic()
    # stale 3 x 2 s after the last OK, then 2 failing probes 5 s apart
    ds.wait_health(name, "unhealthy", timeout=3 * 2 + 2 * 5 + 10)
    status, probe = ds.health(name)
    assert "hung or stopped" in probe, probe
    print(f"\nunhealthy {time.monotonic() - frozen:.1f} s after the daemon was frozen")
    os.kill(pid, signal.SIGCONT)
    ds.wait_health(name, "healthy", timeout=20)


@docker
def test_test_mode_prints_the_measurements_and_no_password(image, make_tor):
    tor = make_tor(auth="password", control="tcp4")
    host = tag_name("dk_test_mode")
    proc = ds.docker("run", "--rm", "--network", "host", "-e", f"TOR_HOSTS={tor.entry(host)}",
                     image.tag, "-t", check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for heading in ("Traffic measurement", "Connections measurement", "Handshakes measurement"):
        assert heading in proc.stdout, f"{heading!r} not printed:\n{out}"
    assert host in proc.stdout
    assert tor.password not in out, "the tor control password was printed"


@docker
def test_read_only_root_with_tmpfs_tmp_is_healthy(containers, make_tor, victoria):
    """`docker run --read-only --tmpfs /tmp` and no other flag: the health file lives in /tmp and
    the buffer falls back to memory (BUFFER_DIR is not writable), with a warning."""
    tor = make_tor(auth="password", control="tcp4")
    host = tag_name("dk_readonly")
    name = containers(influx_env(victoria, TOR_HOSTS=tor.entry(host), **fast()),
                      options=("--read-only", "--tmpfs", "/tmp"))
    ds.wait_health(name, "healthy", timeout=30)
    assert ds.seconds_to_healthy(name) <= 15
    assert wait_points(victoria, host)
    log = ds.logs(name)
    assert "BUFFER_DIR" in log, f"no warning about the unwritable BUFFER_DIR:\n{log}"


@docker
def test_secrets_given_as_files_work(containers, make_tor, victoria, tmp_path):
    """INFLUX_TOKEN_FILE and TOR_HOSTS_FILE (e.g. Docker secrets) instead of variables: the
    password and token appear neither in the container's configuration nor in its log."""
    tor = make_tor(auth="password", control="tcp4")
    host = tag_name("dk_secrets")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    token_file = secrets / "influx_token"
    token_file.write_text(TOKEN + "\n")
    hosts_file = secrets / "tor_hosts"
    hosts_file.write_text(f"# the tor of this test\n{tor.entry(host)}\n")
    for f in (token_file, hosts_file):
        f.chmod(0o444)  # bind mounts keep the host's owner and mode: the daemon's user must read them
    env = influx_env(victoria, **fast(), INFLUX_TOKEN_FILE="/run/secrets/influx_token",
                     TOR_HOSTS_FILE="/run/secrets/tor_hosts")
    del env["INFLUX_TOKEN"]
    name = containers(env, mounts=[(str(token_file), "/run/secrets/influx_token"),
                                   (str(hosts_file), "/run/secrets/tor_hosts")])
    ds.wait_health(name, "healthy", timeout=30)
    assert wait_points(victoria, host)
    config = json.dumps(ds.container_inspect(name)["Config"])
    log = ds.logs(name)
    for secret in (tor.password, TOKEN):
        assert secret not in config, "a secret is in the container's configuration"
        assert secret not in log, "a secret is in the container's log"


# --------------------------------------------------------------------------- compose

def compose_config() -> dict:
    """`docker-compose -f examples/compose/compose.yaml config` (it validates the file), as a dict.

    The YAML is read by the Python that runs docker-compose (Debian's needs python3-yaml anyway)."""
    compose = ROOT / "examples" / "compose"
    proc = subprocess.run([ds.COMPOSE, "-f", str(compose / "compose.yaml"), "config"], cwd=compose,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(ds.COMPOSE, "rb") as fh:
        shebang = fh.readline().decode().strip()
    python = shebang[2:].split()[0] if shebang.startswith("#!") and "python" in shebang else "python3"
    as_json = subprocess.run([python, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
                             input=proc.stdout, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    return json.loads(as_json.stdout)


@pytest.mark.skipif(ds.COMPOSE is None, reason="docker-compose is not installed (tests/run installs it)")
def test_compose_demo_stack_is_valid_and_keeps_its_promises():
    """The README's `docker compose up` demo: validated by docker-compose, no engine needed."""
    config = compose_config()
    services = config["services"]
    assert set(services) == {"tor", "influxdb", "tor2influxdb2", "grafana"}, services.keys()  # grafana: test_dashboards
    tor, influx, app = services["tor"], services["influxdb"], services["tor2influxdb2"]
    # tor: built from Debian's package; its ControlPort is never published on the host
    assert "build" in tor and not tor.get("ports"), tor
    torrc = (ROOT / "examples/compose/tor/torrc").read_text()
    assert "ControlPort" in torrc and "SocksPort 0" in torrc
    assert "HashedControlPassword" in (ROOT / "examples/compose/tor/Dockerfile").read_text()
    # influxdb:2 set up by DOCKER_INFLUXDB_INIT_*, with a healthcheck to wait for
    assert influx["image"].startswith("influxdb:2"), influx
    assert influx["environment"]["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert influx.get("healthcheck"), influx
    # tor2influxdb2: this repository's image, secrets as files, after InfluxDB is healthy
    assert (ROOT / "examples/compose" / app["build"]["context"]).resolve() == ROOT, app["build"]
    env = app["environment"]
    assert env["TOR_HOSTS_FILE"].startswith("/run/secrets/") and env["INFLUX_TOKEN_FILE"].startswith("/run/secrets/")
    assert "TOR_HOSTS" not in env and "INFLUX_TOKEN" not in env
    secrets = {s if isinstance(s, str) else s["source"] for s in app["secrets"]}
    assert {"tor_hosts", "influx_token"} <= secrets
    assert app["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert "com.centurylinklabs.watchtower.enable" in app.get("labels", {})
    # every secret file exists and is readable by the containers' (non-root) users
    for name, secret in config["secrets"].items():
        path = Path(secret["file"])
        assert path.is_file(), f"secret {name}: {path} missing"
        assert path.stat().st_mode & 0o004, f"secret {name}: {path} is not readable by uid 10001"
    # the demo's tor_hosts entry uses the demo tor's password
    password = Path(config["secrets"]["tor_control_password"]["file"]).read_text().strip()
    hosts = Path(config["secrets"]["tor_hosts"]["file"]).read_text()
    assert f"tor:9051:{password}:" in hosts
