"""A real Docker engine for the container tests: start it, make the stand-in base image, build, run, clean up.

No image registry is reachable here, so nothing is ever pulled:

* the engine: if no engine answers, the tests start Debian's dockerd (root only) with
  ``--storage-driver=vfs --iptables=false --bridge=none`` and stop it (SIGTERM, by pid) when they
  are done; an engine that was already running is used and left running. Containers therefore use
  ``--network host`` and builds ``docker build --network host``.
* the base image: the official python image cannot be pulled, so a stand-in is made once with
  debootstrap (Debian bookworm minbase with python3, pip, venv and ca-certificates; this machine's
  CA bundle copied in so pip inside the build trusts the same registry this machine reaches) and
  ``docker import``-ed under BASE_IMAGE. It is kept between runs (making it takes about a minute)
  and made again only when the CA bundle or this recipe changes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import leakcheck
from support import ROOT, wait_for

DOCKER = shutil.which("docker") or "/usr/bin/docker"
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
DEBOOTSTRAP = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
COMPOSE = shutil.which("docker-compose")

BASE_IMAGE = "tor2influxdb2-test-base:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Bump when the recipe below changes, so a cached base image made by an older recipe is made again.
BASE_RECIPE = "2"
BASE_PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"
LOCK_FILE = Path(tempfile.gettempdir()) / "tor2influxdb2-test-base.lock"


class DockerUnavailable(Exception):
    """No Docker engine can be had: the docker tests are skipped with this reason."""


def docker(*args: str, check: bool = True, timeout: float = 120, input: bytes | str | None = None,
           text: bool = True) -> subprocess.CompletedProcess:
    """Run the docker CLI; on failure with check=True raise an AssertionError carrying its output."""
    proc = subprocess.run([DOCKER, *args], capture_output=True, timeout=timeout, input=input, text=text)
    if args and args[0] == "run" and "-d" not in args and text:  # the daemon's own output (-t, errors)
        leakcheck.output("docker run", proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def engine_answers() -> bool:
    if not os.path.exists(DOCKER):
        return False
    try:
        return docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# --------------------------------------------------------------------------- engine

class Engine:
    """The Docker engine the tests use: the running one, or a dockerd the tests start and stop."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "dockerd.log"

    @property
    def started_here(self) -> bool:
        return self.proc is not None

    def ensure(self, timeout: float = 90) -> "Engine":
        if engine_answers():
            return self
        if not os.path.exists(DOCKER):
            raise DockerUnavailable("no docker CLI and no engine: install docker.io (tests/run does)")
        if os.geteuid() != 0:
            socket_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
            if os.path.exists(socket_path) and not os.access(socket_path, os.R_OK | os.W_OK):
                raise DockerUnavailable(
                    f"a Docker engine is running, but its socket {socket_path} is not accessible to this user "
                    "(add the user to the docker group, or run the tests as root)")
            raise DockerUnavailable(
                "no Docker engine answers and only root can start one "
                "(run the tests as root, or start dockerd, or give this user access to a running engine)")
        if not os.path.exists(DOCKERD):
            raise DockerUnavailable("dockerd is not installed: install docker.io (tests/run does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # The default data root (/var/lib/docker) keeps the cached base image between runs.
        self.proc = subprocess.Popen(
            [DOCKERD, "--storage-driver=vfs", "--iptables=false", "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def up():
            if self.proc.poll() is not None:
                # Another test run may have started an engine at the same moment: use that one.
                if engine_answers():
                    self.proc = None
                    return True
                raise RuntimeError(f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
            return engine_answers()

        try:
            wait_for(up, timeout, interval=0.5, what="dockerd to answer `docker info`")
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop dockerd if these tests started it (SIGTERM by pid; SIGKILL only if it lingers)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no dockerd log)"


# ------------------------------------------------------------------- base image

def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (the first URIs: of debian.sources, else sources.list)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            m = re.match(r"\s*URIs:\s*(\S+)", line)
            if m:
                return m.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", line)
            if m and "security" not in m.group(1):
                return m.group(1)
    return "http://deb.debian.org/debian"


def base_key() -> str:
    """Identifies what the cached base image was made from (recipe + this machine's CA bundle)."""
    digest = hashlib.sha256(CA_BUNDLE.read_bytes()).hexdigest()[:16] if CA_BUNDLE.exists() else "no-ca"
    return f"tor2influxdb2-test-base recipe={BASE_RECIPE} ca={digest}"


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False, timeout=30).returncode == 0


def image_inspect(ref: str) -> dict:
    return json.loads(docker("image", "inspect", ref, timeout=30).stdout)[0]


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_base_image(name: str = BASE_IMAGE, log_dir: Path | None = None) -> str:
    """Make the stand-in base image unless an up-to-date one is cached; return its name.

    Debian bookworm minbase + python3, pip, venv, ca-certificates; this machine's CA bundle copied in;
    EXTERNALLY-MANAGED removed (pip may install, as in the official python images); python, python3,
    pip, pip3 linked into /usr/local/bin; documentation, translations and apt lists left out; PATH,
    LANG and CMD set as the official images set them.
    A file lock keeps two test runs from making it at the same time.
    """
    key = base_key()
    with _file_lock(LOCK_FILE):
        old_id = None
        if image_exists(name):
            info = image_inspect(name)
            if info.get("Comment") == key:
                return name
            old_id = info["Id"]
        if os.geteuid() != 0:
            raise DockerUnavailable(f"the stand-in base image {name} is missing and only root can debootstrap it")
        if not os.path.exists(DEBOOTSTRAP):
            raise DockerUnavailable("debootstrap is not installed: install it (tests/run does)")
        workdir = Path(tempfile.mkdtemp(prefix="tor2influxdb2-base-", dir="/var/tmp"))
        rootfs = workdir / "rootfs"
        log_path = (Path(log_dir) if log_dir else workdir) / "debootstrap.log"
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.run(
                    [DEBOOTSTRAP, "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                     str(rootfs), apt_mirror()],
                    stdout=log, stderr=subprocess.STDOUT, timeout=900)
            if proc.returncode != 0:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
                raise AssertionError(f"debootstrap exited {proc.returncode}:\n{tail}")
            certs = rootfs / "etc/ssl/certs"
            certs.mkdir(parents=True, exist_ok=True)
            if CA_BUNDLE.exists():
                shutil.copyfile(CA_BUNDLE, certs / "ca-certificates.crt")
            for marker in glob.glob(str(rootfs / "usr/lib/python3*/EXTERNALLY-MANAGED")):
                os.unlink(marker)
            local_bin = rootfs / "usr/local/bin"
            local_bin.mkdir(parents=True, exist_ok=True)
            for link, target in (("python", "/usr/bin/python3"), ("python3", "/usr/bin/python3"),
                                 ("pip", "/usr/bin/pip3"), ("pip3", "/usr/bin/pip3")):
                (local_bin / link).unlink(missing_ok=True)
                os.symlink(target, local_bin / link)
            # Trimmed as the official slim images are: no documentation, translations or apt
            # lists/caches. Fewer, smaller files also make every container start faster on vfs,
            # which copies the whole root file system for each container.
            for junk in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                         "var/cache/apt", "var/lib/apt/lists"):
                for entry in glob.glob(str(rootfs / junk / "*")):
                    if os.path.isdir(entry) and not os.path.islink(entry):
                        shutil.rmtree(entry)
                    else:
                        os.unlink(entry)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                                   stdout=subprocess.PIPE)
            imp = subprocess.run(
                [DOCKER, "import",
                 "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "--change", "ENV LANG=C.UTF-8",
                 "--change", 'CMD ["python3"]',
                 "--message", key, "-", name],
                stdin=tar.stdout, capture_output=True, text=True, timeout=900)
            tar.stdout.close()
            tar.wait()
            if imp.returncode != 0 or tar.returncode != 0:
                raise AssertionError(f"docker import failed (tar {tar.returncode}, import {imp.returncode}):\n"
                                     f"{imp.stdout}\n{imp.stderr}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if old_id:
            docker("image", "rm", old_id, check=False, timeout=120)
        return name


# ------------------------------------------------------------------ build, run, inspect

def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pip_build_args() -> list[str]:
    """--build-arg for pip's index when this machine's pip uses a non-default one (an http(s) index only).

    The Dockerfile uses them in its build stage only, so they never reach the final image.
    """
    args = []
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
        value = os.environ.get(var, "")
        urls = [u for u in value.split() if var == "PIP_TRUSTED_HOST" or u.startswith(("http://", "https://"))]
        if urls:
            args += ["--build-arg", f"{var}={' '.join(urls)}"]
    if not any(a.startswith("PIP_INDEX_URL=") for a in args):
        try:
            out = subprocess.run(["python3", "-m", "pip", "config", "get", "global.index-url"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out.startswith(("http://", "https://")):
            args += ["--build-arg", f"PIP_INDEX_URL={out}"]
    return args


def builder() -> tuple[str, dict[str, str], str]:
    """(docker CLI, extra environment, name) to build with: BuildKit where this machine has it.

    BuildKit is what current Docker uses, and it is much faster than the legacy builder on the vfs
    storage driver (which copies the whole root file system for every Dockerfile step). A docker
    CLI with the buildx plugin, or a CLI older than 23.0 (BuildKit built in), can use it; else the
    legacy builder. TOR2INFLUXDB2_TEST_BUILDER=legacy|buildkit forces one.
    """
    forced = os.environ.get("TOR2INFLUXDB2_TEST_BUILDER", "")
    if forced == "legacy":
        return DOCKER, {"DOCKER_BUILDKIT": "0"}, "legacy"
    candidates = [DOCKER] + [c for c in ("/usr/bin/docker",) if os.path.exists(c) and c != DOCKER]
    for cli in candidates:
        if subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=30).returncode == 0:
            return cli, {"DOCKER_BUILDKIT": "1"}, "buildkit"
    for cli in candidates:
        out = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        m = re.match(r"(\d+)\.", out)
        if m and int(m.group(1)) < 23:
            return cli, {"DOCKER_BUILDKIT": "1"}, "buildkit"
    if forced == "buildkit":
        raise DockerUnavailable("TOR2INFLUXDB2_TEST_BUILDER=buildkit but no docker CLI here can use BuildKit")
    return DOCKER, {"DOCKER_BUILDKIT": "0"}, "legacy"


def image_ids() -> set[str]:
    return set(docker("images", "-a", "-q", "--no-trunc", timeout=60).stdout.split())


def build_image(tag: str, base: str, build_args: dict[str, str] | None = None,
                context: Path = ROOT, dockerfile: str | None = None, no_cache: bool = False,
                timeout: float = 900) -> tuple[float, str]:
    """docker build --network host --build-arg BASE_IMAGE=base; return (seconds, build output).

    `dockerfile` is the text of another Dockerfile (given on standard input) to build `context` with.
    """
    cli, extra_env, kind = builder()
    cmd = [cli, "build", "--network", "host", "-t", tag, "--build-arg", f"BASE_IMAGE={base}"]
    if kind == "buildkit":
        cmd += ["--progress", "plain"]
    cmd += pip_build_args()
    for k, v in (build_args or {}).items():
        cmd += ["--build-arg", f"{k}={v}"]
    if no_cache:
        cmd.append("--no-cache")
    if dockerfile is not None:
        cmd += ["-f", "-"]
    cmd.append(str(context))
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=dockerfile,
                          env={**os.environ, **extra_env})
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise AssertionError(f"docker build ({kind}) failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return took, f"({kind} builder)\n{proc.stdout}{proc.stderr}"


def remove_build_leftovers(before: set[str]) -> None:
    """Remove the untagged images a build left (the legacy builder keeps the build stage's as
    dangling images) that were not there before it, and the unused build cache (BuildKit)."""
    dangling = set(docker("images", "-a", "-q", "--no-trunc", "--filter", "dangling=true",
                          check=False, timeout=60).stdout.split())
    for image_id in dangling - before:
        docker("image", "rm", image_id, check=False, timeout=120)
    cli, extra_env, _ = builder()
    subprocess.run([cli, "builder", "prune", "-f"], capture_output=True, timeout=300,
                   env={**os.environ, **extra_env})


def remove_image(ref: str) -> None:
    docker("image", "rm", "-f", ref, check=False, timeout=120)


def remove_container(name: str) -> None:
    docker("rm", "-f", "-v", name, check=False, timeout=60)


def container_inspect(name: str) -> dict:
    return json.loads(docker("inspect", "--type", "container", name, timeout=30).stdout)[0]


def container_state(name: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .State}}", name, timeout=30).stdout)


def health(name: str) -> tuple[str, str]:
    """(status, output of the last health probe) of a running container."""
    state = container_state(name)
    h = state.get("Health") or {}
    log = h.get("Log") or []
    return h.get("Status", "none"), (log[-1].get("Output", "").strip() if log else "")


def wait_health(name: str, status: str, timeout: float) -> float:
    """Wait until the container's health status is `status`; return the seconds it took."""
    start = time.monotonic()

    def reached():
        state = container_state(name)
        if not state.get("Running"):
            raise AssertionError(f"container {name} is not running (exit {state.get('ExitCode')}):\n"
                                 f"{logs(name)}")
        return (state.get("Health") or {}).get("Status") == status

    try:
        wait_for(reached, timeout, interval=0.25, what=f"container {name} to turn {status}")
    except AssertionError as exc:
        st, out = ("?", "?")
        with contextlib.suppress(Exception):
            st, out = health(name)
        raise AssertionError(f"{exc}\nhealth: {st}; last probe: {out}\n--- container log ---\n"
                             f"{logs(name)}") from None
    return time.monotonic() - start


def _epoch(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds -> unix seconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", stamp)
    if not m:
        raise ValueError(f"not a docker time: {stamp!r}")
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + float("0." + (m.group(2) or "0"))


def seconds_to_healthy(name: str) -> float:
    """Seconds from the container's start to the end of its first successful health probe."""
    state = container_state(name)
    for entry in (state.get("Health") or {}).get("Log") or []:
        if entry.get("ExitCode") == 0:
            return _epoch(entry["End"]) - _epoch(state["StartedAt"])
    raise AssertionError(f"container {name} had no successful health probe: {state.get('Health')}")


def logs(name: str) -> str:
    proc = docker("logs", name, check=False, timeout=30)
    leakcheck.output(f"docker logs {name}", proc.stdout + proc.stderr)
    return (proc.stdout + proc.stderr)[-6000:]


def host_pid(name: str) -> int:
    """The host pid of the container's PID 1 (the daemon): signals sent from inside its own
    namespace are ignored by a PID 1 without a handler, so SIGSTOP/SIGCONT go from the host."""
    return int(docker("inspect", "--format", "{{.State.Pid}}", name, timeout=30).stdout.strip())


def run_args(env: dict[str, str] | None = None, mounts: list[tuple[str, str]] | None = None) -> list[str]:
    """`docker run` options for environment variables and read-only bind mounts."""
    args = []
    leakcheck.env_secrets(env or {})
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    for src, dst in mounts or []:
        args += ["--mount", f"type=bind,source={src},target={dst},readonly"]
    return args
