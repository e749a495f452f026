"""tor_to_influxdb2.py, the entry point: what an unexpected exception (a bug) shows."""

import threading

import pytest

import tor_to_influxdb2
from tor2influxdb2.redact import REDACTOR

SECRET = "entry-test-secret-7d1c"


@pytest.fixture
def secret():
    REDACTOR.add(SECRET)
    return SECRET


def test_a_bug_in_the_main_thread_is_one_masked_line_and_status_70(monkeypatch, capsys, secret):
    def broken():
        raise ValueError(f"cannot use {secret!r} here")
    monkeypatch.setattr(tor_to_influxdb2, "main", broken)
    assert tor_to_influxdb2.entry() == 70
    err = capsys.readouterr().err
    assert err.startswith("internal error (a bug, please report it): ValueError: cannot use ")
    assert "test_entry.py:" in err and err.count("\n") == 1
    assert secret not in err and "Traceback" not in err


def test_a_bug_in_a_thread_is_one_masked_line(monkeypatch, capsys, secret):
    monkeypatch.setattr(threading, "excepthook", tor_to_influxdb2.on_thread_exception)

    def broken():
        raise RuntimeError(f"token={secret}")
    thread = threading.Thread(target=broken, name="delivery")
    thread.start()
    thread.join()
    err = capsys.readouterr().err
    assert err.startswith("thread delivery: internal error (a bug, please report it): RuntimeError: token=")
    assert secret not in err and "Traceback" not in err


@pytest.mark.parametrize("module, package, args", [("stem", "stem", ["-t"]), ("urllib3", "urllib3", [])])
def test_a_requirement_that_is_not_installed_is_named_with_the_pip_command_and_status_2(module, package, args,
                                                                                       tmp_path):
    # A Python without the pinned requirements (python3 instead of the venv's): the real import fails.
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import sys; sys.modules[{module!r}] = None; import tor_to_influxdb2; "
            "sys.exit(tor_to_influxdb2.entry())")
    env = {"PATH": os.environ.get("PATH", ""), "TOR_HOSTS": f"127.0.0.1:9051:{SECRET}:tor1",
           "INFLUX_URL": "http://127.0.0.1:9", "INFLUX_ORGANIZATION": "org", "INFLUX_BUCKET": "tor",
           "INFLUX_TOKEN": SECRET + "-token", "HEALTHCHECK_FILE": str(tmp_path / "health")}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (f"installation problem: the Python package {package} is not installed for "
                         f"{sys.executable} (install the pinned requirements: pip install -r requirements.txt)")
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_the_requirements_named_are_those_requirements_txt_pins():
    """Every package of requirements.txt is one the entry point can name when it is missing, by the
    import names it provides (as installed here), so a new requirement cannot be reported as a bug."""
    import importlib.metadata
    import pathlib
    import re
    def canonical(name):  # a distribution's name as pip compares it (PEP 503)
        return re.sub(r"[-_.]+", "-", name).lower()
    text = (pathlib.Path(tor_to_influxdb2.__file__).parent / "requirements.txt").read_text()
    pinned = {canonical(line.split("==")[0]) for line in text.splitlines() if line.strip() and not line.startswith("#")}
    provides = importlib.metadata.packages_distributions()
    named = {canonical(pip) for pip in tor_to_influxdb2.REQUIREMENTS.values()}
    assert named == pinned
    for module, pip in tor_to_influxdb2.REQUIREMENTS.items():
        assert pip.lower() in {d.lower() for d in provides.get(module, [])}, (module, pip)
