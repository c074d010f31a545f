"""The service files in contrib/: the systemd unit is valid and hardened, the annotated
configuration names every setting with its default, and `esc serve` reports readiness with
sd_notify."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

from esc.config import ServeSettings, load_settings
from esc.systemd import notify

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "esc.service"
CONFIG = ROOT / "contrib" / "esc.toml"


def unit_keys(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> values, in order (systemd allows a key more than once)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        keys.setdefault(f"{section}.{name.strip()}", []).append(value.strip())
    return keys


def test_the_unit_is_a_hardened_notify_service_restarted_on_failure():
    keys = unit_keys(UNIT.read_text())
    assert keys["Service.Type"] == ["notify"]
    assert keys["Service.Restart"] == ["on-failure"]
    assert "esc serve" in keys["Service.ExecStart"][0]
    assert keys["Service.User"] == ["esc"] and keys["Service.StateDirectory"] == ["esc"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes")):
        assert keys[f"Service.{key}"] == [value], key
    assert keys["Install.WantedBy"] == ["multi-user.target"]
    # systemctl reload: SIGHUP, which re-reads credentials, policy and trusted peers.
    assert keys["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # the key checks above still ran
        return
    esc = Path(sys.executable).with_name("esc")
    unit = tmp_path / "esc.service"
    unit.write_text(UNIT.read_text().replace("/opt/esc/.venv/bin/esc", str(esc)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "esc.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_the_annotated_config_names_every_setting_with_its_default():
    written = tomllib.loads(CONFIG.read_text())
    assert set(written) == {f.name for f in fields(ServeSettings)}
    loaded = load_settings({}, str(CONFIG), environ={})
    defaults = ServeSettings()
    for f in fields(ServeSettings):
        if f.name == "store":  # the service keeps its store in its state directory
            assert getattr(loaded, f.name) == "sqlite:////var/lib/esc/esc.sqlite3"
            continue
        assert getattr(loaded, f.name) == getattr(defaults, f.name), f.name


def test_notify_sends_to_the_socket_systemd_names(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert listener.recv(4096) == b"READY=1"
    assert not notify("READY=1", {})  # outside systemd: nothing to do


def test_esc_serve_reports_ready_once_listening_and_stopping_on_sigterm(tmp_path,
                                                                       subprocess_env):
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(30)
    env = dict(subprocess_env, NOTIFY_SOCKET=str(path))
    server = subprocess.Popen(
        [sys.executable, "-m", "esc", "serve", "--listen", "udp:127.0.0.1:0",
         "--store", f"sqlite:///{tmp_path / 'esc.sqlite3'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1\n") and "listening udp 127.0.0.1:" in ready
        assert server.stdout is not None
        assert "listening udp" in server.stdout.readline()
        server.send_signal(signal.SIGTERM)
        assert listener.recv(4096) == b"STOPPING=1"
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        listener.close()
