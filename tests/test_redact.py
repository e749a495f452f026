"""redact: a secret is masked in every form an error message may carry it in, before it is cut."""

import base64
import json
import urllib.parse

import pytest

from tor2influxdb2.redact import Redactor, clip, REDACTOR

SECRET = 'to"k\\en/+=ü\n'


@pytest.mark.parametrize("form", [
    SECRET, repr(SECRET)[1:-1], json.dumps(SECRET)[1:-1], urllib.parse.quote(SECRET, safe=""),
    urllib.parse.quote_plus(SECRET), SECRET.encode().hex(), base64.b64encode(SECRET.encode()).decode(),
    str(SECRET.encode())[2:-1], SECRET.replace("\\", "\\\\").replace('"', '\\"'),
])
def test_every_form_is_masked(form):
    r = Redactor()
    r.add(SECRET)
    assert r.mask(f"error: <{form}> again <{form}>") == "error: <****> again <****>"


def test_clip_masks_before_it_cuts():
    REDACTOR.add("a-long-secret-token-value")
    try:
        text = "x" * 190 + "a-long-secret-token-value" + "y" * 50
        clipped = clip(text, 200)
        assert "a-long" not in clipped and len(clipped) <= 200
    finally:
        REDACTOR.clear()


def test_short_secrets_are_masked_in_plain_form_only():
    r = Redactor()
    r.add("pw")
    assert r.mask("my pw") == "my ****" and r.mask("7077") == "7077"
