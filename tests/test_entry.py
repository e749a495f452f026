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
