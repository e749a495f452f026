"""examples/kubernetes: the sharded StatefulSet, checked offline.

* Every manifest validates against the Kubernetes API schemas (kubernetes-validate, strict: an
  unknown or misspelt field is an error) of Kubernetes 1.30 and of the newest release the package
  ships; no cluster is needed (none can run here).
* The promises of the README hold in the YAML: every replica the same tors, SHARD_INDEX from the
  pod-index label, SHARD_COUNT = replicas, secrets as files, one buffer volume per replica, the
  securityContext, probes that run the image's health check.
* The probes and paths work for real: the daemon, configured with the manifest's environment and
  its volumes laid out as the kubelet lays them out (an emptyDir is mode 0777 without the sticky
  bit), polls a real tor into VictoriaMetrics, and the manifest's probe commands say what the
  README says they say.
What cannot be checked here: scheduling, the kubelet, a real volume provisioner.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from support import ROOT, Daemon, Tor, VictoriaMetrics, wait_for

K8S = ROOT / "examples" / "kubernetes"
#: The oldest Kubernetes the manifests promise (the pod-index label is beta from 1.28, on by default).
KUBERNETES_VERSION = "1.30.0"
VERSIONS = (KUBERNETES_VERSION, kubernetes_validate.latest_version())
POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"
HEALTHCHECK = "/opt/tor2influxdb2/healthcheck.sh"


def documents() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == set(kustomization["resources"]), \
        "every manifest is applied by kubectl apply -k"
    return docs


def one(kind: str) -> dict:
    (doc,) = [d for d in documents() if d["kind"] == kind]
    return doc


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_manifests_validate_against_the_kubernetes_api_schemas():
    for doc in documents():
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_what_the_api_server_would():
    statefulset = copy.deepcopy(one("StatefulSet"))
    statefulset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)
    statefulset = copy.deepcopy(one("StatefulSet"))
    statefulset["spec"]["replicas"] = "3"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def test_every_replica_polls_its_share_of_the_same_tors():
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (daemon,) = pod["containers"]
    env = env_of(daemon)
    # the shard: the pod's ordinal, and as many shards as replicas
    assert env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == POD_INDEX
    assert int(env["SHARD_COUNT"]["value"]) == sts["spec"]["replicas"], "SHARD_COUNT must equal replicas"
    assert "SHARD" not in env
    # the same tors and token for every replica: files of one Secret, nothing per pod
    mounts = {m["name"]: m for m in daemon["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for variable, key in (("TOR_HOSTS_FILE", "tor_hosts"), ("INFLUX_TOKEN_FILE", "influx_token")):
        path = env[variable]["value"]
        (mount,) = [m for m in mounts.values() if path.startswith(m["mountPath"] + "/")]
        assert mount.get("readOnly") is True, mount
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] and {"key": key, "path": os.path.relpath(path, mount["mountPath"])} \
            in secret["items"], (variable, secret)
        assert secret["defaultMode"] & 0o007 == 0, "the secret files are not world-readable"
    assert "TOR_HOSTS" not in env and "INFLUX_TOKEN" not in env, "secrets only as files"
    # governing service: headless, for this StatefulSet
    service = one("Service")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def test_one_buffer_per_replica_and_nothing_else_writable():
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (daemon,) = pod["containers"]
    env = env_of(daemon)
    mounts = {m["mountPath"]: m for m in daemon["volumeMounts"]}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    buffer_mount = [m for m in mounts.values() if m["name"] == claim["metadata"]["name"]]
    assert [m["mountPath"] for m in buffer_mount] == ["/var/lib/tor2influxdb2"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], "a buffer is never shared"
    assert env["BUFFER_DIR"]["value"].startswith("/var/lib/tor2influxdb2/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert env["HEALTHCHECK_FILE"]["value"].startswith("/tmp/")
    assert claim["metadata"]["name"] not in volumes, "the buffer comes from the claim template, not a shared volume"
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"secret", "emptyDir"}, f"no hostPath or shared volume: {volume}"


def test_security_context():
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile, "the image's user is the manifest's"
    for container in pod.get("initContainers", []) + pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001, container["name"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert ctx.get("privileged", False) is False, container["name"]


def test_probes_run_the_images_health_check():
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    (daemon,) = pod["containers"]
    assert daemon["readinessProbe"]["exec"]["command"] == ["/bin/sh", HEALTHCHECK]
    assert re.search(r"COPY .*healthcheck\.sh /opt/tor2influxdb2/", (ROOT / "Dockerfile").read_text()), \
        "the image has healthcheck.sh where the probe runs it"
    for probe in ("startupProbe", "livenessProbe"):
        assert daemon[probe]["exec"]["command"][:2] == ["/bin/sh", "-c"], probe
        assert daemon[probe]["timeoutSeconds"] <= daemon[probe]["periodSeconds"]
    assert env_of(daemon)["RUN_EVERY_SECONDS"]["value"].isdigit(), "the probes read the period"


def test_disruption_budget_covers_the_pods():
    pdb = one("PodDisruptionBudget")
    labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def readme_figure(pattern: str) -> float:
    match = re.search(pattern, (ROOT / "README.md").read_text())
    assert match, f"README.md has no figure matching {pattern!r}"
    return float(match.group(1).replace(",", ""))


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def test_resources_are_sized_from_the_benchmark():
    """The requests cover what the README's benchmark measured for 1,000 tors per replica."""
    (daemon,) = one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    resources = daemon["resources"]
    rss_1000 = readme_figure(r"\| 1,000 \| [^|]+\| [^|]+\| (\d+\.\d) MiB")
    on_disk = readme_figure(r"1,296,000 points waiting on disk[^|]*\| [\d.]+ MiB / [\d.]+ MiB: \+(\d+\.\d) MiB")
    in_memory = readme_figure(r"1,296,000 points waiting in memory[^|]*\| [\d.]+ MiB / [\d.]+ MiB: \+(\d+\.\d) MiB")
    assert mebibytes(resources["requests"]["memory"]) >= rss_1000 + on_disk
    assert mebibytes(resources["limits"]["memory"]) >= rss_1000 + in_memory  # the disk failing: memory holds them
    assert mebibytes(resources["limits"]["memory"]) >= 1.5 * mebibytes(resources["requests"]["memory"])
    assert "cpu" not in resources.get("limits", {}), "a CPU limit would throttle the first cycle's connects"
    cpu_per_host_ms = readme_figure(r"\| 1,000 \| [^|]+\| (\d+\.\d+) ms \|")  # CPU per host-poll
    period = int(env_of(daemon)["RUN_EVERY_SECONDS"]["value"])
    millicores_1000 = cpu_per_host_ms * 1000 / period
    assert int(resources["requests"]["cpu"].rstrip("m")) >= millicores_1000
    (claim,) = one("StatefulSet")["spec"]["volumeClaimTemplates"]
    file_bytes_per_point = readme_figure(r"1,296,000 points waiting on disk \((\d+) MB file\)") * 1e6 / 1_296_000
    assert mebibytes(claim["spec"]["resources"]["requests"]["storage"]) * 2**20 >= 1_296_000 * file_bytes_per_point


# --------------------------------------------------------------------------- the pod, for real

def remap(text: str, where: dict[str, Path]) -> str:
    """A path (or a command) of the pod as a path of this test's directory, in one pass."""
    if not where:
        return text
    pattern = "|".join(re.escape(k) for k in sorted(where, key=len, reverse=True))
    return re.sub(rf"(?<![\w/])({pattern})(?=/|\b|$)", lambda m: str(where[m.group(1)]), text)


def run_probe(command: list[str], env: dict[str, str], where: dict[str, Path]) -> subprocess.CompletedProcess:
    command = [remap(part, where) for part in command]
    return subprocess.run(command, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
                          timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="lays out the pod's volumes as the kubelet does (root)")
def test_the_pod_as_the_manifest_configures_it(tmp_path):
    """The manifest's environment, init command and probes, with the volumes as the kubelet makes
    them: emptyDir /tmp and the buffer volume's root mode 0777 (no sticky bit), the Secret's files."""
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (daemon_spec,) = pod["containers"]
    (init,) = pod["initContainers"]
    where = {"/run/secrets/tor2influxdb2": tmp_path / "secrets", "/var/lib/tor2influxdb2": tmp_path / "pv",
             "/tmp": tmp_path / "emptydir", "/opt/tor2influxdb2/healthcheck.sh": ROOT / "healthcheck.sh"}
    for path in (where["/tmp"], where["/var/lib/tor2influxdb2"]):
        path.mkdir()
        path.chmod(0o777)
    (tmp_path / "secrets").mkdir()
    tor = Tor(tmp_path / "tor").start()
    vm = VictoriaMetrics(tmp_path / "vm").start()
    daemon = None
    try:
        secret_items = {"tor_hosts": tor.entry("shard-0-tor") + "\n", "influx_token": "k8s-test-token-0123456789\n"}
        for name, content in secret_items.items():
            (tmp_path / "secrets" / name).write_text(content)
            (tmp_path / "secrets" / name).chmod(0o440)
        env = {}
        for name, item in env_of(daemon_spec).items():
            if "value" in item:
                env[name] = remap(item["value"], where)
        env["SHARD_INDEX"] = "0"  # what the kubelet takes from the pod-index label
        env["INFLUX_URL"] = vm.url
        env["RUN_EVERY_SECONDS"] = "1"  # the manifest's 10 s, shortened for the test

        # Without the init container, the image's default place fails on an emptyDir
        bare = Daemon({**env, "HEALTHCHECK_FILE": str(where["/tmp"] / "healthcheck")}).start()
        assert bare.proc.wait(20) == 2, bare.output
        assert "HEALTHCHECK_FILE" in bare.output and "other users can write" in bare.output, bare.output

        init_run = run_probe(init["command"], env, where)
        assert init_run.returncode == 0, init_run.stderr
        daemon = Daemon(env).start()
        alive = daemon_spec["livenessProbe"]["exec"]["command"]
        assert daemon_spec["startupProbe"]["exec"]["command"] == alive
        ready = daemon_spec["readinessProbe"]["exec"]["command"]
        wait_for(lambda: run_probe(alive, env, where).returncode == 0, 20, what="startup probe")
        wait_for(lambda: run_probe(ready, env, where).returncode == 0, 20, what="readiness probe")
        assert (Path(env["BUFFER_DIR"]) / "buffer.sqlite3").is_file(), "the buffer is on the claimed volume"
        wait_for(lambda: vm.samples("traffic_read", host="shard-0-tor"), 20, what="points in VictoriaMetrics")

        # a tor down: not ready, still alive (no restart for a remote problem)
        tor.stop()
        wait_for(lambda: run_probe(ready, env, where).returncode == 1, 20, what="not ready with the tor down")
        assert run_probe(alive, env, where).returncode == 0
        # the daemon frozen: its health file goes stale, the liveness probe fails
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            stale = wait_for(lambda: (r := run_probe(alive, env, where)).returncode == 1 and r, 15,
                             what="liveness failing on a frozen daemon")
            assert "old" in stale.stdout, stale.stdout
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
    finally:
        if daemon is not None:
            assert daemon.stop() == 0, daemon.output
        vm.stop()
        tor.stop()


def test_liveness_probe_reads_the_watchdogs_verdict(tmp_path):
    """The daemon's watchdog writes FAILED '... no cycle finished ...' with a fresh time when the
    main loop hangs: the liveness probe fails on it, and on a stale file, but not on a cycle that
    finished with a tor down."""
    import threading
    import time

    from tor2influxdb2.health import HealthFile, Watchdog  # the daemon's own words, not a copy
    (daemon_spec,) = one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    alive = daemon_spec["livenessProbe"]["exec"]["command"]
    health = tmp_path / "health"
    env = {"HEALTHCHECK_FILE": str(health), "RUN_EVERY_SECONDS": "10"}
    hf = HealthFile(str(health))
    hf.write(False, "host bravo: no answer within 5 s")
    assert run_probe(alive, env, {}).returncode == 0, "a FAILED cycle is alive"
    hf.write(True)
    assert run_probe(alive, env, {}).returncode == 0
    now = [100.0]
    watchdog = Watchdog(hf, 30, threading.Event(), clock=lambda: now[0])
    now[0] += 31
    assert watchdog.check()
    assert "no cycle finished" in health.read_text()
    result = run_probe(alive, env, {})
    assert result.returncode == 1 and "stuck" in result.stdout, result.stdout
    health.write_text(f"OK {int(time.time()) - 31}\n")
    result = run_probe(alive, env, {})
    assert result.returncode == 1 and "old" in result.stdout, result.stdout
    health.unlink()
    assert run_probe(alive, env, {}).returncode == 1
