"""targets: every TOR_HOSTS form; malformed entries explained without quoting any field."""

import pytest

from tor2influxdb2.targets import EntryError, check_tag_value, parse_tor_host, parse_tor_hosts


@pytest.mark.parametrize("entry, expected", [
    ("192.168.0.1:9051:rpi2", dict(address="192.168.0.1", port=9051, password=None, name="rpi2")),
    ("10.0.0.2:9051:mypassw0rd:rpi3", dict(address="10.0.0.2", port=9051, password="mypassw0rd", name="rpi3")),
    ("10.0.0.2:9051:pa:ss:wo:rd:rpi3", dict(address="10.0.0.2", port=9051, password="pa:ss:wo:rd", name="rpi3")),
    ("raspberry.home:9051:rpi3", dict(address="raspberry.home", port=9051, password=None, name="rpi3")),
    ("tor_relay:9051:pw:relay", dict(address="tor_relay", port=9051, password="pw", name="relay")),
    ("localhost:9051:local", dict(address="localhost", port=9051, password=None, name="local")),
    ("[::1]:9051:v6", dict(address="::1", port=9051, password=None, name="v6")),
    ("[2001:db8::7]:9051:p:w:v6", dict(address="2001:db8::7", port=9051, password="p:w", name="v6")),
    ("10.0.0.2:9051::nopw", dict(address="10.0.0.2", port=9051, password=None, name="nopw")),
    ("unix:/run/tor/control:sock", dict(socket_path="/run/tor/control", password=None, name="sock")),
    ("unix:/run/tor/control:se:cret:sock", dict(socket_path="/run/tor/control", password="se:cret", name="sock")),
    ("10.0.0.2:9051:pässwörd ü:relay é", dict(password="pässwörd ü", name="relay é")),
    ("beef:9051:cafe:babe:name", dict(address="beef", port=9051, password="cafe:babe", name="name")),
])
def test_tor_host_forms(entry, expected):
    host = parse_tor_host(entry)
    for key, value in expected.items():
        assert getattr(host, key) == value, key


def test_the_longest_unix_socket_path_and_port():
    assert parse_tor_host("unix:/run/" + "d" * 102 + ":n").socket_path == "/run/" + "d" * 102  # 107 bytes
    assert parse_tor_host("10.0.0.1:65535:n").port == 65535 and parse_tor_host("10.0.0.1:09051:n").port == 9051


def test_password_never_in_repr_or_description():
    host = parse_tor_host("10.0.0.2:9051:hunter2secret:relay")
    assert "hunter2secret" not in repr(host) and "hunter2secret" not in host.describe()
    assert "****" in host.describe()


def test_a_three_field_entry_is_not_named_until_it_proves_not_to_be_a_password():
    """HOST:PORT:X: X may be a password typed without its name, so it is not shown at start."""
    host = parse_tor_host("10.0.0.2:9051:mypassw0rd", "TOR_HOSTS entry 3")
    assert host.password_given is False
    assert "mypassw0rd" not in host.describe() and "TOR_HOSTS entry 3" in host.describe()
    assert parse_tor_host("10.0.0.2:9051::relay").password_given is True  # explicit empty password


SECRETS = ("hunter2", "s3cr3t", "pw,with", "zz8")


@pytest.mark.parametrize("entry, needle", [
    ("10.0.0.1", "expected HOST:PORT:NAME"),
    ("10.0.0.1:9051", "the name is missing"),
    ("10.0.0.1:0:n", "the port (second field) is not a number from 1 to 65535"),
    ("10.0.0.1:65536:n", "the port (second field)"),
    ("10.0.0.1:zz8:hunter2:n", "the port (second field)"),
    ("10.0.0.1:٩٠٥١:n", "the port (second field)"),
    ("10.0.0.1:²:n", "the port (second field)"),
    ("10.0.0.1:" + "9" * 5000 + ":hunter2:n", "the port (second field)"),  # beyond int()'s digit limit
    ("10.0.0.1:009051:n", "the port (second field)"),
    ("unix:/run/" + "d" * 103 + ":hunter2:n", "longer than 107 bytes"),  # sun_path holds 108, NUL included
    ("unix:/run/" + "é" * 52 + ":hunter2:n", "longer than 107 bytes"),  # bytes, not characters
    ("10.0.0.1:9051:hunter2:", "the name"),
    ("::1:9051:n", "must be written in brackets"),
    ("[::1:9051:n", "has no ']'"),
    ("[zz::1]:9051:n", "not an IPv6 address"),
    ("unix:relative/path:n", "must be absolute"),
    ("bad host!:9051:n", "neither an IPv4 address"),
    ("s3cr3t host:9051:n", "neither an IPv4 address"),
    ("10.0.0.1:9051:hunter2:back\\slash", "backslash"),
    ("10.0.0.1:9051:hunter2:tab\there", "control or unprintable"),
    ("10.0.0.1:9051:hunter2\n:name", "the password contains a control"),
])
def test_malformed_entries_are_explained_without_quoting_fields(entry, needle):
    with pytest.raises(EntryError) as info:
        parse_tor_host(entry)
    message = str(info.value)
    assert needle in message
    for secret in SECRETS:
        assert secret not in message
    assert entry not in message


def test_duplicate_names_are_reported_without_the_name():
    hosts, problems = parse_tor_hosts([("TOR_HOSTS entry 1", "a:1:s3cr3tname"), ("TOR_HOSTS entry 2", "b:2:s3cr3tname")])
    assert [h.name for h in hosts] == ["s3cr3tname"]
    assert problems == ["TOR_HOSTS entry 2: its name (the last field) is already used by TOR_HOSTS entry 1; "
                        "names become the host tag and must be unique"]


@pytest.mark.parametrize("value, ok", [("rpi3", True), ("relay é", True), ("a,b=c d", True), ("x" * 128, True),
                                       ("x" * 129, False), ("a\\b", False), ("a\nb", False), (" a", False),
                                       ("", False), ("a\u2028b", False)])
def test_tag_values(value, ok):
    assert (check_tag_value(value, "the name") is None) is ok


# -------------------------------------------------------------------------------- shards

def test_shards_poll_every_tor_exactly_once_and_a_new_replica_moves_few():
    from tor2influxdb2.targets import shard, shard_owner
    hosts = [parse_tor_host(f"10.0.{i // 250}.{i % 250}:9051:relay{i:04d}") for i in range(1000)]
    five = [shard(hosts, i, 5) for i in range(5)]
    assert sorted(h.name for part in five for h in part) == sorted(h.name for h in hosts)
    assert all(150 <= len(part) <= 250 for part in five), [len(p) for p in five]
    moved = sum(1 for h in hosts if shard_owner(h.name, 5) != shard_owner(h.name, 6))
    assert moved <= 250 and all(shard_owner(h.name, 6) == 5 for h in hosts
                                if shard_owner(h.name, 5) != shard_owner(h.name, 6))
    print(f"5 -> 6 replicas moved {moved} of 1,000 tors")
