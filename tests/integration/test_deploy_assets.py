"""The deployment assets under deploy/: each checked by a validator made for it, then for the
properties that keep calls alive across restarts (stop timeouts above drain_timeout, probes,
drain hooks) and the hardening they promise.

- systemd: ``systemd-analyze verify`` and ``systemd-analyze security`` (Debian's systemd
  package); the daemon runs a simulated call under the unit's own system-call filter and W^X.
- Kubernetes: the bundled OpenAPI schemas of ``kubernetes-validate`` (strict), offline.
- Compose: the Compose Specification schema bundled in ``check-jsonschema``
  (``--builtin-schema vendor.compose-spec``), offline.
- Every shipped config with every shipped environment example passes ``patterd check``.

A missing validator fails the test with how to install it: none of this is skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "patterd.service"
UNIT_ENV = DEPLOY / "systemd" / "patterd.env.example"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
COMPOSE_ENV = DEPLOY / "compose" / ".env.example"
PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
K8S = DEPLOY / "kubernetes"
SHIPPED_CONFIG = ROOT / "config" / "patter.yaml"
HAPROXY = DEPLOY / "haproxy" / "haproxy.cfg"

# After drain_timeout the agent says goodbye and hangs up (bounded at 30 s in patterd.server),
# then the HTTP runner shuts down (5 s): every stop timeout must cover drain_timeout + 35 s.
DRAIN_TAIL = 35
# Variables the daemon or the shipped configs read (README: command line and configuration; docs/configuration.md; config/*.yaml).
DAEMON_VARS = {"TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_SIGNING_KEYS",
               "TELNYX_API_KEY", "TELNYX_CONNECTION_ID", "TELNYX_PUBLIC_KEY", "PATTERD_ADMIN_TOKEN",
               "PATTERD_CONFIG"}


# --------------------------------------------------------------------------------------------
# helpers


def require_command(name: str, how: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed to validate the deployment assets and is not installed: "
                    f"{how}", pytrace=False)
    return path


def systemd_analyze() -> str:
    return require_command("systemd-analyze", "install Debian's `systemd` package "
                           "(`apt-get install systemd`; make test-deps does it)")


def require_module(name: str, requirement: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        pytest.fail(f"the Python package {requirement!r} is needed to validate the deployment "
                    f"assets: it is in the test extras (`pip install -e '.[test]'`, or "
                    f"`make test`)", pytrace=False)


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any PATTERD_/TWILIO_/TELNYX_ setting of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PATTERD_", "TWILIO_", "TELNYX_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update(extra)
    return env


def patterd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "patterd", *args]


def patterd_check(config: Path, env: dict[str, str]) -> dict[str, Any]:
    """``patterd check``: exit 0, and the effective config (secrets masked)."""
    out = subprocess.run(patterd_cmd("check", "--config", str(config)), capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env=clean_env(**env))
    assert out.returncode == 0, f"patterd check {config} failed:\n{out.stderr}"
    return yaml.safe_load(out.stdout)


def patterd_executable() -> str:
    """The installed ``patterd`` console script (for ExecStart= in a unit being verified)."""
    candidate = Path(sys.executable).parent / "patterd"
    if candidate.exists():
        return str(candidate)
    return require_command("patterd", "install the project (`pip install -e .`)")


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (systemd EnvironmentFile= / compose env_file syntax); comments skipped."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}: bad line {raw!r}"
        assert not value.startswith(("'", '"')) and " #" not in value, \
            f"{path}: {key}: keep values unquoted and without trailing comments"
        out[key] = value
    return out


def env_names_mentioned(path: Path) -> set[str]:
    """Every KEY in KEY=value lines, commented out or not."""
    return set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.M))


def config_vars() -> set[str]:
    """${VAR} names read by the shipped configs."""
    names: set[str] = set()
    for path in [SHIPPED_CONFIG, *sorted((ROOT / "config" / "examples").glob("*.yaml"))]:
        names |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))
    return names


def drain_timeout(config_text: str) -> float:
    return float(yaml.safe_load(config_text)["server"]["drain_timeout"])


# --------------------------------------------------------------------------------------------
# systemd


def unit_entries(path: Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """The unit as (key, value) pairs per section, in order (keys may repeat)."""
    path = UNIT if path is None else path
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), "no line continuations in the unit"
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        assert current is not None
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_values(key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit_entries()[section] if k == key]


def unit_value(key: str, section: str = "Service") -> str:
    values = unit_values(key, section)
    assert values, f"{UNIT.name}: [{section}] {key}= is missing"
    return values[-1]


def verifiable_unit(tmp_path: Path, text: str | None = None) -> Path:
    """A copy of the unit whose ExecStart/ExecReload name this machine's patterd (verify checks
    that the binaries exist)."""
    text = UNIT.read_text() if text is None else text
    copy = tmp_path / "patterd.service"
    copy.write_text(text.replace("/opt/patterd/bin/patterd", patterd_executable()))
    return copy


def verify(unit: Path) -> tuple[int, str]:
    out = subprocess.run([systemd_analyze(), "verify", "--man=no", str(unit)],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stderr + out.stdout


def timespan_seconds(value: str) -> float:
    """A systemd time span, as systemd itself reads it."""
    out = subprocess.run([systemd_analyze(), "timespan", value], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    usec = re.search(r"μs:\s*(\d+)", out.stdout)
    assert usec, out.stdout
    return int(usec.group(1)) / 1e6


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    code, output = verify(verifiable_unit(tmp_path))
    # verify exits 0 on unknown keys and unparsable values (it only warns): any line about
    # the unit is a failure.
    own = [line for line in output.splitlines() if "patterd.service" in line]
    assert code == 0 and not own, output


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key and a bad value are reported."""
    broken = UNIT.read_text().replace("Type=notify", "Type=notifyy") \
        .replace("ProtectHome=yes", "ProtectHomee=yes")
    code, output = verify(verifiable_unit(tmp_path, broken))
    assert "notifyy" in output and "ProtectHomee" in output, output


def test_systemd_unit_security_exposure_is_low(tmp_path: Path) -> None:
    unit = verifiable_unit(tmp_path)
    out = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=20",
                          "--no-pager", str(unit)], capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for patterd\.service: ([0-9.]+) (\w+)", out.stdout)
    assert score, out.stdout + out.stderr
    # 0 (fully locked down) … 10 (unprotected); this unit scored 1.2 "OK" with systemd 252.
    assert float(score.group(1)) <= 2.0 and out.returncode == 0, out.stdout


def test_systemd_unit_runs_the_daemon_as_a_notify_service_that_drains() -> None:
    assert unit_value("Type") == "notify"
    assert unit_value("NotifyAccess") == "main"
    assert unit_value("ExecStart").split() == ["/opt/patterd/bin/patterd", "--config",
                                               "/etc/patterd/patter.yaml"]
    reloads = unit_values("ExecReload")
    assert reloads[-1] == "/bin/kill -HUP $MAINPID"
    assert all(r.startswith(("/opt/patterd/bin/patterd check --config /etc/patterd/patter.yaml",
                             "/bin/kill")) for r in reloads), reloads
    assert unit_value("KillSignal") == "SIGTERM"
    assert unit_value("KillMode") in ("mixed", "control-group")
    assert unit_value("Restart") == "on-failure"
    assert timespan_seconds(unit_value("WatchdogSec")) == 30
    # The daemon pings every WatchdogSec/2 and drains for up to drain_timeout (+ goodbye).
    stop = timespan_seconds(unit_value("TimeoutStopSec"))
    assert stop >= drain_timeout(SHIPPED_CONFIG.read_text()) + DRAIN_TAIL, stop
    assert timespan_seconds(unit_value("TimeoutStartSec")) >= 60
    assert unit_value("EnvironmentFile") == "-/etc/patterd/patterd.env"
    assert "network-online.target" in " ".join(unit_values("After", "Unit"))
    assert unit_value("WantedBy", "Install") == "multi-user.target"


def test_systemd_unit_keeps_its_state_in_the_state_directory() -> None:
    assert unit_value("StateDirectory") == "patterd"
    assert unit_value("WorkingDirectory") == "/var/lib/patterd"
    env = dict(v.split("=", 1) for v in unit_values("Environment"))
    assert env["PATTERD_STORE_URL"] == "sqlite:////var/lib/patterd/patterd.db"
    assert env["PATTERD_CONFIG"] == "/etc/patterd/patter.yaml"


def test_systemd_unit_is_hardened() -> None:
    assert unit_value("DynamicUser") == "yes" or unit_value("User") not in ("", "root", "0")
    expected = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "NoNewPrivileges": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
        "ProtectClock": "yes", "ProtectHostname": "yes", "RestrictSUIDSGID": "yes",
        "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "", "LimitNOFILE": "65536",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert unit_value(key) == value, key
    assert set(unit_value("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6",
                                                                   "AF_UNIX"}
    filters = unit_values("SystemCallFilter")
    assert filters[0] == "@system-service" and "~@privileged @resources" in filters
    assert unit_value("SystemCallErrorNumber") == "EPERM"
    # No secrets inline: they come from the EnvironmentFile.
    for value in unit_values("Environment"):
        assert not re.match(r"(TWILIO|TELNYX|PATTERD_ADMIN)", value), value


def test_systemd_env_example_configures_the_shipped_config() -> None:
    """The unit's Environment= plus patterd.env.example (which wins, as in systemd) give a
    valid configuration that serves the example's public URL from the state directory."""
    unit_env = dict(v.split("=", 1) for v in unit_values("Environment"))
    env = {**unit_env, **env_file(UNIT_ENV)}
    shown = patterd_check(SHIPPED_CONFIG, env)
    assert shown["server"]["public_url"] == "https://voice.example.com"
    assert shown["server"]["host"] == "127.0.0.1"
    assert shown["carrier"]["api_base_url"] == "https://api.twilio.com"
    assert shown["store"]["url"].startswith("sqlite:////var/lib/patterd/")
    assert env_names_mentioned(UNIT_ENV) <= DAEMON_VARS | config_vars(), \
        env_names_mentioned(UNIT_ENV) - DAEMON_VARS - config_vars()


def test_no_deploy_example_carries_a_usable_admin_token(tmp_path: Path) -> None:
    """The admin API places calls: no example ships a token one could run with (the old
    placeholders are refused at start, exit 2 naming admin.token), and each example says how
    to generate one."""
    shipped = {UNIT_ENV: env_file(UNIT_ENV), COMPOSE_ENV: env_file(COMPOSE_ENV),
               K8S / "secret.yaml": k8s_object("Secret")["stringData"]}
    for path, values in shipped.items():
        assert "PATTERD_ADMIN_TOKEN" not in values, path
        assert "openssl rand -hex 32" in path.read_text(), path
    unit_env = dict(v.split("=", 1) for v in unit_values("Environment"))
    for placeholder in ("replace-with-a-long-random-token", "REPLACE_ME_long_random_admin_token",
                        "changeme-changeme-changeme"):
        out = subprocess.run(patterd_cmd("check", "--config", str(SHIPPED_CONFIG)),
                             capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env=clean_env(**unit_env, **env_file(UNIT_ENV),
                                           PATTERD_ADMIN_TOKEN=placeholder))
        assert out.returncode == 2, out.stdout
        assert "admin.token:" in out.stderr and "openssl rand -hex 32" in out.stderr, out.stderr
        assert placeholder not in out.stderr                  # not echoed


# The daemon under the unit's seccomp filter and W^X: a process that loads the same system-call
# allow-list systemd builds from SystemCallFilter= (via libseccomp, EPERM for the rest, socket()
# limited to RestrictAddressFamilies=) and the kernel's W^X policy (PR_SET_MDWE, the kernel's
# version of MemoryDenyWriteExecute=), then execs the daemon.
SANDBOX = r'''
import ctypes, ctypes.util, json, os, socket, sys
spec = json.loads(os.environ.pop("SANDBOX_SPEC"))
lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(ArgCmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, EQ = 0x7fff0000, 4
ctx = lib.seccomp_init(0x00050000 | spec["errno"])          # SCMP_ACT_ERRNO(errno)
for name in spec["allow"]:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        continue
    if name == "socket" and spec["families"]:
        for family in spec["families"]:
            cmp = (ArgCmp * 1)(ArgCmp(0, EQ, getattr(socket, family), 0))
            assert lib.seccomp_rule_add_array(ctx, ALLOW, nr, 1, cmp) == 0
    else:
        assert lib.seccomp_rule_add_array(ctx, ALLOW, nr, 0, None) == 0, name
libc = ctypes.CDLL(None, use_errno=True)
if spec["mdwe"] and libc.prctl(65, 1, 0, 0, 0) != 0:        # PR_SET_MDWE, REFUSE_EXEC_GAIN
    sys.exit("sandbox: prctl(PR_SET_MDWE) failed (Linux >= 6.3 needed): errno %d"
             % ctypes.get_errno())
if lib.seccomp_load(ctx) != 0:
    sys.exit("sandbox: seccomp_load failed")
os.execv(sys.argv[1], sys.argv[1:])
'''


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run([systemd_analyze(), "syscall-filter"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.stdout.splitlines():
        text = line.strip()
        if not text:
            continue
        if not line[0].isspace():
            current = text if text.startswith("@") else None
            if current:
                groups[current] = []
            continue
        if current and not text.startswith("#"):
            groups[current].append(text.split()[0])
    return groups


def unit_syscall_allow_list() -> set[str]:
    """What systemd allows for the unit's SystemCallFilter= lines (allow-list mode: @default
    and the exec/exit basics implied, then each line adds or, with ~, removes)."""
    groups = syscall_groups()

    def expand(item: str) -> set[str]:
        if not item.startswith("@"):
            return {item}
        assert item in groups, f"unknown syscall group {item}"
        return set().union(*(expand(m) for m in groups[item]))

    filters = unit_values("SystemCallFilter")
    assert not filters[0].startswith("~"), "expected an allow-list"
    allowed = expand("@default") | {"execve", "exit", "exit_group", "getrlimit",
                                    "rt_sigreturn", "sigreturn"}
    for line in filters:
        items = set().union(*(expand(i) for i in line.lstrip("~").split()))
        allowed = allowed - items if line.startswith("~") else allowed | items
    return allowed


def start_daemon(tmp_path: Path, *, prefix: list[str] | None = None
                 ) -> tuple[subprocess.Popen[bytes], int, dict[str, str], Path]:
    """The daemon on the shipped config, on free loopback ports, until /readyz says 200."""
    port, api_port = free_port(), free_port()
    env = clean_env(PATTERD_HOST="127.0.0.1", PATTERD_PORT=str(port),
                    PATTERD_PUBLIC_URL=f"http://127.0.0.1:{port}",
                    TWILIO_API_BASE_URL=f"http://127.0.0.1:{api_port}",
                    PATTERD_STORE_URL=f"sqlite:///{tmp_path / 'patterd.db'}",
                    PATTERD_LOG_LEVEL="info")
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([*(prefix or []), *patterd_cmd("--config", str(SHIPPED_CONFIG))],
                                cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, port, env, log
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"daemon did not start:\n{log.read_text()}")
        time.sleep(0.1)


def simulate(env: dict[str, str], port: int, *script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        patterd_cmd("simulate", "--config", str(SHIPPED_CONFIG), "--url",
                    f"http://127.0.0.1:{port}", *script, "--json"),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def log_events(log: Path) -> list[str]:
    return [json.loads(line)["event"] for line in log.read_text().splitlines()
            if line.startswith("{")]


@pytest.mark.slow
def test_daemon_serves_calls_under_the_units_syscall_filter_and_wx(tmp_path: Path) -> None:
    library = ctypes.util.find_library("seccomp")
    if library is None:
        pytest.fail("libseccomp (Debian's libseccomp2, a dependency of systemd) is needed to "
                    "run the daemon under the unit's system-call filter", pytrace=False)
    allowed = unit_syscall_allow_list()
    assert "mbind" in allowed and "setuid" not in allowed and "chown" not in allowed
    spec = {"allow": sorted(allowed),
            "errno": getattr(errno, unit_value("SystemCallErrorNumber")),
            "families": unit_value("RestrictAddressFamilies").split(),
            "mdwe": unit_value("MemoryDenyWriteExecute") == "yes"}
    launcher = tmp_path / "sandbox.py"
    launcher.write_text(SANDBOX)
    proc, port, env, log = start_daemon(
        tmp_path, prefix=["env", f"SANDBOX_SPEC={json.dumps(spec)}", sys.executable,
                          str(launcher)])
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s*2$", status, flags=re.M), "the filter is not loaded"
        # A transfer (DTMF 1) and a spoken turn: VAD (onnxruntime), STT, TTS (ctypes callbacks),
        # the carrier's REST API, the media WebSocket.
        sim = simulate(env, port, "--say", "what are your opening hours", "--dtmf", "1")
        out, err = sim.communicate(timeout=120)
        assert sim.returncode == 0, err + out
        call = json.loads(out)["calls"][0]
        assert call["ok"] and call["outcome"] == "transferred", call
        assert any("open nine to five" in line.get("text", "").lower()
                   for line in call["transcript"]), call["transcript"]
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        stop(proc)
    events = log_events(log)
    assert "reloaded" in events and events[-1] == "stopped", events
    text = log.read_text()
    assert "Operation not permitted" not in text and "Traceback" not in text, text


# --------------------------------------------------------------------------------------------
# Kubernetes


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return {name: [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
            for name in kustomization["resources"]}


def k8s_object(kind: str) -> dict[str, Any]:
    found = [d for docs in k8s_docs().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def configmap_file(key: str) -> str:
    return k8s_object("ConfigMap")["data"][key]


def k8s_container() -> dict[str, Any]:
    containers = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "patterd"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    kinds = {d["kind"] for docs in k8s_docs().values() for d in docs}
    assert kinds == {"Namespace", "ConfigMap", "Secret", "Deployment", "Service",
                     "PodDisruptionBudget"}
    image = k8s_container()["image"].split(":")[0]
    assert [i["name"] for i in kustomization["images"]] == [image]


@pytest.mark.parametrize("version", ["1.28.0", "latest"])
def test_kubernetes_manifests_validate_against_the_api_schemas(version: str) -> None:
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    if version == "latest":
        version = kv.latest_version()
    checked = 0
    for name, docs in k8s_docs().items():
        for doc in docs:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name}: {doc['kind']} {path}: {exc.message} (Kubernetes {version})")
            checked += 1
    assert checked == 6


def test_kubernetes_schema_validation_catches_mistakes() -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    deployment = k8s_object("Deployment")
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 660
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, kv.latest_version(), strict=True)


def test_deployment_outlasts_the_drain() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    drain = drain_timeout(configmap_file("patter.yaml"))
    # preStop settle (5 s) + drain + goodbye + shutdown, all inside the grace period.
    assert pod["terminationGracePeriodSeconds"] >= drain + DRAIN_TAIL + 5 + 15
    hook = k8s_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert hook == ["python3", "/etc/patterd/prestop.py"]
    prestop = configmap_file("prestop.py")
    assert re.search(r'PATTERD_PRESTOP_TIMEOUT", "(\d+)"', prestop)
    budget = float(re.search(r'PATTERD_PRESTOP_TIMEOUT", "(\d+)"', prestop).group(1))
    settle = float(re.search(r'PATTERD_PRESTOP_SETTLE", "([\d.]+)"', prestop).group(1))
    assert drain + DRAIN_TAIL <= budget and settle + budget <= pod["terminationGracePeriodSeconds"]
    compile(prestop, "prestop.py", "exec")


def test_deployment_probes_replicas_and_rollout() -> None:
    deployment = k8s_object("Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = k8s_container()
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    config = yaml.safe_load(configmap_file("patter.yaml"))
    assert config["server"]["host"] == "0.0.0.0" and config["server"]["port"] == 8000


def test_deployment_is_non_root_read_only_and_without_capabilities() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    c = k8s_container()
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert pod["automountServiceAccountToken"] is False
    # A Service named patterd would otherwise inject PATTERD_PORT=tcp://… (read by the config).
    assert pod["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/var/lib/patterd"]]
    config_volume = volumes[mounts["/etc/patterd"]]
    assert config_volume["configMap"]["name"] == k8s_object("ConfigMap")["metadata"]["name"]
    assert c["args"] == ["--config", "/etc/patterd/patter.yaml"]


def test_service_pdb_and_secret_fit_the_deployment() -> None:
    deployment = k8s_object("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = k8s_object("Service")["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": "http",
                                 "protocol": "TCP"}]
    assert service["selector"].items() <= labels.items()
    pdb = k8s_object("PodDisruptionBudget")["spec"]
    # One replica at a time drains, whatever the replica count; never all of them.
    assert pdb["maxUnavailable"] == 1 < deployment["spec"]["replicas"]
    assert "minAvailable" not in pdb
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    secret = k8s_object("Secret")
    assert [e["secretRef"]["name"] for e in k8s_container()["envFrom"]] == \
        [secret["metadata"]["name"]]
    # Placeholders, clearly marked.
    assert "EXAMPLE ONLY" in (K8S / "secret.yaml").read_text()
    assert "REPLACE_ME" in secret["stringData"]["TWILIO_AUTH_TOKEN"]
    assert set(secret["stringData"]) <= DAEMON_VARS | config_vars() | \
        set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", configmap_file("patter.yaml")))


def test_configmap_config_with_the_secret_is_valid(tmp_path: Path) -> None:
    secret = k8s_object("Secret")["stringData"]
    env = {e["name"]: e["value"] for e in k8s_container()["env"]}
    path = tmp_path / "patter.yaml"
    path.write_text(configmap_file("patter.yaml"))
    shown = patterd_check(path, {**secret, **env})
    assert shown["store"]["url"].startswith("postgresql://")
    assert "REPLACE_ME" not in json.dumps(shown["store"])     # the password is masked
    assert shown["server"]["public_url"].startswith("https://")
    assert shown["carrier"]["api_base_url"] == "https://api.twilio.com"


@pytest.mark.slow
def test_prestop_hook_drains_and_waits_for_the_live_call(tmp_path: Path) -> None:
    """The ConfigMap's preStop hook, run against a live daemon with a call in progress: it
    starts the drain (/readyz 503), waits while the call goes on, and returns once it is over;
    the call ends normally and the daemon exits 0."""
    hook = tmp_path / "prestop.py"
    hook.write_text(configmap_file("prestop.py"))
    proc, port, env, log = start_daemon(tmp_path)
    sim = None
    try:
        sim = simulate(env, port, "--say", "what are your opening hours", "--say", "goodbye")
        deadline = time.monotonic() + 30
        while _calls_active(port) < 1:
            assert time.monotonic() < deadline and sim.poll() is None, "the call did not start"
            time.sleep(0.1)
        started = time.monotonic()
        prestop = subprocess.Popen(
            [sys.executable, str(hook)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**env, "PATTERD_PID": str(proc.pid), "PATTERD_PORT": str(port),
                            "PATTERD_PRESTOP_SETTLE": "0.5", "PATTERD_PRESTOP_TIMEOUT": "90"})
        saw_draining = False
        while prestop.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).close()
            except urllib.error.HTTPError as exc:
                saw_draining |= exc.code == 503
            except OSError:
                pass
            assert time.monotonic() - started < 100, "the preStop hook did not return"
            time.sleep(0.2)
        _, hook_err = prestop.communicate()
        assert prestop.returncode == 0, hook_err
        assert saw_draining, "readyz never turned 503 while the hook waited"
        assert "1 live call(s), waiting" in hook_err, hook_err
        out, err = sim.communicate(timeout=60)
        call = json.loads(out)["calls"][0]
        # The caller said goodbye and the agent hung up: the call was not cut by the drain.
        assert call["ok"] and call["outcome"] == "hung_up_by_agent", call
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if sim is not None:
            stop(sim)
        stop(proc)
    events = log_events(log)
    assert "draining" in events and "drain_timeout" not in events and events[-1] == "stopped"


def _calls_active(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body = r.read().decode()
    except OSError:
        return 0.0
    match = re.search(r"^patterd_calls_active ([0-9.e+-]+)$", body, flags=re.M)
    return float(match.group(1)) if match else 0.0


# --------------------------------------------------------------------------------------------
# Compose


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    assert match and value, f"unexpected compose duration {value!r}"
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


def check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    require_module("check_jsonschema", "check-jsonschema")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", *args],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_validates_against_the_compose_spec() -> None:
    out = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_spec_validation_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a misspelt service key and a wrong depends_on condition."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("stop_grace_period: 660s",
                                               "stop_grace_periods: 660s"))
    out = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(bad))
    assert out.returncode != 0 and "stop_grace_periods" in out.stdout + out.stderr
    bad.write_text(COMPOSE.read_text().replace("condition: service_healthy",
                                               "condition: healthy"))
    assert check_jsonschema("--builtin-schema", "vendor.compose-spec",
                            str(bad)).returncode != 0


def test_compose_patterd_service() -> None:
    services = compose()["services"]
    assert set(services) == {"patterd", "postgres", "prometheus"}
    p = services["patterd"]
    here = COMPOSE.parent
    assert (here / p["build"]["context"] / p["build"]["dockerfile"]).resolve() == \
        ROOT / "Dockerfile"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in p["volumes"]}
    config = (here / mounts["/etc/patterd/patter.yaml"]).resolve()
    assert config == SHIPPED_CONFIG
    # Docker must not SIGKILL a draining daemon.
    assert p["stop_signal"] == "SIGTERM"
    assert compose_seconds(p["stop_grace_period"]) >= drain_timeout(config.read_text()) + \
        DRAIN_TAIL
    test = p["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python" and "/readyz" in test[-1]
    assert "curl" not in json.dumps(test) and "wget" not in json.dumps(test)
    assert p["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    env = p["environment"]
    assert re.fullmatch(r"postgresql://patterd:\$\{POSTGRES_PASSWORD[^}]*\}@postgres:5432/patterd",
                        env["PATTERD_STORE_URL"])
    assert env["PATTERD_HOST"] == "0.0.0.0" and env["PATTERD_PORT"] == "8000"
    assert p["read_only"] is True and p["cap_drop"] == ["ALL"] and "/tmp" in p["tmpfs"]
    assert p["env_file"] == [{"path": ".env", "required": False}]


def test_compose_postgres_and_prometheus() -> None:
    doc = compose()
    pg = doc["services"]["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volume = pg["volumes"][0].split(":")
    assert volume[0] in doc["volumes"] and volume[1] == "/var/lib/postgresql/data"
    assert pg["environment"]["POSTGRES_USER"] == "patterd" == pg["environment"]["POSTGRES_DB"]
    assert "ports" not in pg
    prom = doc["services"]["prometheus"]
    mounted = {m.split(":")[1]: m.split(":")[0] for m in prom["volumes"]}
    assert (COMPOSE.parent / mounted["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    for service in doc["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith(".") or source in doc["volumes"], mount


def test_prometheus_scrapes_patterd_metrics() -> None:
    # No promtool here (Debian ships it only inside the prometheus server package): the
    # structure Prometheus reads, checked directly.
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert set(config) <= {"global", "scrape_configs", "rule_files", "alerting"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    patterd = jobs["patterd"]
    assert patterd.get("metrics_path", "/metrics") == "/metrics"
    assert patterd.get("scheme", "http") == "http"
    targets = [t for sc in patterd["static_configs"] for t in sc["targets"]]
    assert targets == ["patterd:8000"]
    for job in config["scrape_configs"]:
        assert set(job) <= {"job_name", "metrics_path", "scheme", "static_configs",
                            "scrape_interval", "scrape_timeout"}, job
    assert compose_seconds(config["global"]["scrape_interval"]) > 0


def test_compose_env_example_configures_the_shipped_config() -> None:
    """docker compose's view: .env fills ${…} in the compose file and is patterd's env_file;
    `environment:` wins. The result must pass `patterd check`, with PostgreSQL as the store."""
    dotenv = env_file(COMPOSE_ENV)
    interpolated = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    assert interpolated <= set(dotenv), interpolated - set(dotenv)

    def interpolate(value: str) -> str:
        def one(m: re.Match[str]) -> str:
            return dotenv.get(m.group(1)) or m.group(3) or ""
        return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:?-([^}]*))?\}", one, value)

    environment = {k: interpolate(str(v))
                   for k, v in compose()["services"]["patterd"]["environment"].items()}
    shown = patterd_check(SHIPPED_CONFIG, {**dotenv, **environment})
    assert shown["store"]["url"].startswith("postgresql://patterd:")
    assert "@postgres:5432/patterd" in shown["store"]["url"]
    assert dotenv["POSTGRES_PASSWORD"] not in shown["store"]["url"]   # masked
    assert shown["server"]["public_url"] == "https://voice.example.com"
    assert env_names_mentioned(COMPOSE_ENV) <= DAEMON_VARS | config_vars() | {"POSTGRES_PASSWORD"}
    assert ".env" in (COMPOSE.parent / ".gitignore").read_text().split()


# --------------------------------------------------------------------------------------------


# HAProxy (several replicas behind one address; run for real by test_load_balanced.py)


def haproxy() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("haproxy is needed to validate deploy/haproxy/haproxy.cfg and is not "
                    "installed: install Debian's `haproxy` package (`apt-get install haproxy`; "
                    "make test-deps does it)", pytrace=False)
    return found


def haproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([haproxy(), "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30)


def haproxy_section(name: str) -> list[str]:
    """The directives of one section (``backend patterd``), comments dropped."""
    lines: list[str] = []
    inside = False
    for raw in HAPROXY.read_text().splitlines():
        if raw and not raw[0].isspace() and not raw.startswith("#"):
            inside = raw.strip() == name
            continue
        text = raw.split("#", 1)[0].strip()
        if inside and text:
            lines.append(" ".join(text.split()))
    return lines


def test_haproxy_config_passes_haproxy_check() -> None:
    out = haproxy_check(HAPROXY)
    assert out.returncode == 0, out.stdout + out.stderr


def test_haproxy_check_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a misspelt keyword and a bad timeout are refused."""
    bad = tmp_path / "haproxy.cfg"
    for old, new in (("balance roundrobin", "balance roundrobbin"),
                     ("timeout tunnel 2h", "timeout tunnel two-hours")):
        assert old in HAPROXY.read_text()
        bad.write_text(HAPROXY.read_text().replace(old, new))
        out = haproxy_check(bad)
        assert out.returncode != 0, (new, out.stdout + out.stderr)


def _haproxy_seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 0.001, "m": 60, "h": 3600,
                              "d": 86400}[m.group(2)]


def test_haproxy_config_carries_calls() -> None:
    """WebSockets outlive the longest call, the health check is readiness (a draining
    replica leaves within ~2 s) and requests are spread without stickiness."""
    defaults = haproxy_section("defaults")
    timeouts = {line.split()[1]: _haproxy_seconds(line.split()[2])
                for line in defaults if line.startswith("timeout ")}
    max_call = max(float(yaml.safe_load(SHIPPED_CONFIG.read_text())["agent"].get(
        "max_call_seconds", 3600)), 3600.0)
    assert timeouts["tunnel"] >= max_call + DRAIN_TAIL, timeouts
    assert 15 <= timeouts["client"] <= 120 and 15 <= timeouts["server"] <= 120, timeouts
    assert timeouts["connect"] <= 5 and timeouts["http-request"] <= 30
    assert "mode http" in defaults
    backend = haproxy_section("backend patterd")
    assert "balance roundrobin" in backend
    assert "option httpchk GET /readyz" in backend
    assert "http-check expect status 200" in backend
    assert not [ln for ln in backend if re.match(r"(stick|cookie|hash-type|balance source)",
                                                  ln) or "on-marked-down" in ln], backend
    checks = next(ln for ln in backend if ln.startswith("default-server")).split()
    opts = dict(zip(checks[1::1], checks[2::1]))
    assert "check" in checks
    # Out of the rotation within inter + (fall - 1) x fastinter.
    out_after = _haproxy_seconds(opts["inter"]) + (int(opts["fall"]) - 1) * \
        _haproxy_seconds(opts.get("fastinter", opts["inter"]))
    assert out_after <= 2.0, out_after
    frontend = haproxy_section("frontend patterd")
    assert "option forwardfor" in frontend
    assert any("X-Forwarded-Proto" in ln for ln in frontend)
    assert [ln for ln in backend if ln.startswith("server ")], "no servers"


def test_haproxy_logs_no_media_token_and_no_query(tmp_path: Path) -> None:
    """The shipped config's log line names each request's method and path, but a Telnyx
    media URL's per-call token is masked and query strings are left out."""
    from tests.support.cluster import template_haproxy

    backend_port, lb_port = free_port(), free_port()
    backend = subprocess.Popen(
        [sys.executable, "-c", "import http.server as h, sys\n"
         "class H(h.BaseHTTPRequestHandler):\n"
         "    def do_GET(self):\n"
         "        self.send_response(200); self.send_header('Content-Length', '0');"
         " self.end_headers()\n"
         "    def log_message(self, *a): pass\n"
         f"h.ThreadingHTTPServer(('127.0.0.1', {backend_port}), H).serve_forever()"])
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(template_haproxy(HAPROXY.read_text(), bind_port=lb_port,
                                    servers=[("patterd-1", backend_port)],
                                    socket_path=tmp_path / "admin.sock"))
    log = tmp_path / "haproxy.log"
    with log.open("wb") as sink:
        lb = subprocess.Popen([haproxy(), "-db", "-f", str(cfg)], stdout=sink,
                              stderr=subprocess.STDOUT)
    try:
        secret = "SECRETTOKENv3c2VjcmV0.dGFnLXRhZy10YWc"
        deadline = time.monotonic() + 20
        while True:
            try:
                for path in (f"/media/telnyx/{secret}", "/webhooks/twilio/amd?ctx=c2VjcmV0"):
                    with urllib.request.urlopen(f"http://127.0.0.1:{lb_port}{path}",
                                                timeout=2) as resp:
                        assert resp.status == 200
                break
            except (OSError, urllib.error.HTTPError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(0.3)
    finally:
        lb.terminate()
        backend.terminate()
        lb.wait(10)
        backend.wait(10)
    text = log.read_text(errors="replace")
    assert '"GET /media/telnyx/*** HTTP/1.1"' in text, text[-2000:]
    assert '"GET /webhooks/twilio/amd HTTP/1.1"' in text, text[-2000:]
    assert secret not in text and "SECRET" not in text and "c2VjcmV0" not in text


def test_system_deps_installs_haproxy_for_tests() -> None:
    script = (DEPLOY / "scripts" / "system-deps.sh").read_text()
    test_block = script.split('if [ "${1:-runtime}" = "test" ]; then', 1)[1].split("\nfi", 1)[0]
    assert "want+=(haproxy)" in test_block and "command -v haproxy" in test_block


def test_system_deps_installs_chromium_for_the_console_tests() -> None:
    script = (DEPLOY / "scripts" / "system-deps.sh").read_text()
    test_block = script.split('if [ "${1:-runtime}" = "test" ]; then', 1)[1].split("\nfi", 1)[0]
    assert "want+=(chromium)" in test_block and "command -v chromium" in test_block


# --------------------------------------------------------------------------------------------


def test_deploy_readme_describes_every_asset() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in [UNIT, UNIT_ENV, COMPOSE, COMPOSE_ENV, PROMETHEUS, HAPROXY,
                 *sorted(K8S.glob("*.yaml"))]:
        assert f"`{path.name}`" in readme, path.name
