"""postgresql store URLs -> eventsourcing settings (no server needed)."""

from __future__ import annotations

import pytest

from infrastructure import BadStoreURL, parse_store_url
from infrastructure.store_url import POSTGRES_DEFAULTS, redact_url


def settings(url: str) -> dict[str, str]:
    config = parse_store_url(url)
    assert config.kind == "postgresql"
    return config.env


def test_the_full_tcp_form():
    env = settings("postgresql://esc:s%40cret@db.example.com:6543/presence")
    assert env["PERSISTENCE_MODULE"] == "infrastructure.postgres:EscPostgresFactory"
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == ("esc", "s@cret")
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("db.example.com", "6543")
    assert env["POSTGRES_DBNAME"] == "presence"


@pytest.mark.parametrize("url", [
    "postgresql://postgres@/esc?host=/var/run/postgresql",
    "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql/esc",
    "postgres://postgres@%2fvar%2frun%2fpostgresql:5432/esc",
])
def test_a_unix_socket_directory_as_the_host(url):
    env = settings(url)
    assert env["POSTGRES_HOST"] == "/var/run/postgresql"
    assert (env["POSTGRES_PORT"], env["POSTGRES_DBNAME"]) == ("5432", "esc")


def test_a_percent_encoded_socket_path_keeps_its_case():
    assert settings("postgresql://u@%2Fsrv%2FPG/db")["POSTGRES_HOST"] == "/srv/PG"


def test_ipv6_host_and_defaults():
    env = settings("postgresql://[::1]:5433/db")
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_USER"]) == \
        ("::1", "5433", "postgres")
    for key, value in POSTGRES_DEFAULTS.items():
        assert env[key] == value  # bounded waits unless the URL says otherwise
    assert parse_store_url("postgresql://h/db").view_path is None  # in-memory view per node


def test_pool_and_timeout_settings_from_the_query():
    config = parse_store_url("postgresql://h/db?pool_size=8&max_overflow=0&connect_timeout=2"
                             "&lock_timeout=3&pre_ping=no&schema=esc&sslmode=require"
                             "&statement_timeout=10&reconnect_timeout=4&view=/tmp/v.db")
    env = config.env
    assert (env["POSTGRES_POOL_SIZE"], env["POSTGRES_MAX_OVERFLOW"]) == ("8", "0")
    assert (env["POSTGRES_CONNECT_TIMEOUT"], env["POSTGRES_LOCK_TIMEOUT"]) == ("2", "3")
    assert (env["POSTGRES_PRE_PING"], env["POSTGRES_SCHEMA"]) == ("no", "esc")
    assert (env["POSTGRES_SSLMODE"], env["POSTGRES_STATEMENT_TIMEOUT"]) == ("require", "10")
    assert env["POSTGRES_RECONNECT_TIMEOUT"] == "4"
    assert config.view_path == "/tmp/v.db"


@pytest.mark.parametrize("url, message", [
    ("postgresql://h/", "names no database"),
    ("postgresql://h:99999/db", "bad port"),
    ("postgresql://h/db?pool=3", "unknown postgresql URL parameter: pool"),
    ("postgresql://h/db?pool_size=0", "pool_size must be at least 1"),
    ("postgresql://h/db?connect_timeout=soon", "connect_timeout must be a number"),
    ("postgresql://h/db?pre_ping=maybe", "pre_ping must be yes or no"),
    ("postgresql://h/db?host=/run/pg", "host twice"),
])
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(BadStoreURL, match=message):
        parse_store_url(url)


def test_passwords_are_redacted_for_logs():
    assert redact_url("postgresql://esc:secret@db:5432/x?pool_size=2") == \
        "postgresql://esc:***@db:5432/x?pool_size=2"
    assert redact_url("postgresql://esc@db/x") == "postgresql://esc@db/x"
    assert redact_url("sqlite:///esc.sqlite3") == "sqlite:///esc.sqlite3"


def test_a_bad_url_message_never_shows_the_password():
    with pytest.raises(BadStoreURL) as refused:
        parse_store_url("postgresql://esc:hunter2@db:0/x")
    assert "hunter2" not in str(refused.value) and "esc:***@db" in str(refused.value)
