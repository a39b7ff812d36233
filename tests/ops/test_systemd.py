"""The systemd integration files: ``systemd-analyze verify`` passes, the directives docs/operations.md documents
are there, sysusers/tmpfiles apply, and the hardening (MemoryDenyWriteExecute) does not break the
gateway's native code paths."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import unavailable

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "mailgateway.service"
HARDENING = SYSTEMD / "mailgateway.service.d" / "hardening.conf"


def _directives(*paths: Path) -> dict[str, list[str]]:
    """Key -> values, in file order (unit files repeat keys; configparser cannot read them)."""
    out: dict[str, list[str]] = {}
    for path in paths:
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                out.setdefault(key.strip(), []).append(value.strip())
    return out


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not installed (Debian package systemd; scripts/test installs it)")
    return path


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit and its drop-in, with ExecStart pointing at this checkout's entry point: verify
    checks the command is executable, and /usr/bin/mailgateway exists only once packaged."""
    exe = Path(sys.executable).with_name("mailgateway")
    if not exe.exists():
        exe = Path(sys.executable)
    shutil.copytree(SYSTEMD / "mailgateway.service.d", tmp_path / "mailgateway.service.d")
    text = UNIT.read_text().replace("/usr/bin/mailgateway", str(exe))
    (tmp_path / "mailgateway.service").write_text(text)
    return tmp_path / "mailgateway.service"


def test_systemd_analyze_verify_passes_without_warnings(unit_copy: Path) -> None:
    proc = subprocess.run([_tool("systemd-analyze"), "verify", str(unit_copy)],
                          capture_output=True, text=True, timeout=60)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if str(unit_copy.parent) in line
            or "mailgateway" in line]
    assert proc.returncode == 0, proc.stderr
    assert ours == [], "\n".join(ours)  # e.g. "Unknown key ... ignoring" is only a warning


def test_drop_in_is_read_by_verify(unit_copy: Path) -> None:
    """Guards the test above: a typo in the drop-in must show up, so the drop-in is checked."""
    with (unit_copy.parent / "mailgateway.service.d" / "hardening.conf").open("a") as fh:
        fh.write("ProtectSystm=strict\n")
    proc = subprocess.run([_tool("systemd-analyze"), "verify", str(unit_copy)],
                          capture_output=True, text=True, timeout=60)
    assert "ProtectSystm" in proc.stderr


def test_security_exposure_stays_low(unit_copy: Path) -> None:
    proc = subprocess.run([_tool("systemd-analyze"), "security", "--offline=true", "--no-pager",
                           str(unit_copy)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for mailgateway\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout[-2000:] + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout


def test_unit_has_the_lifecycle_and_secret_directives() -> None:
    d = _directives(UNIT)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"] and d["WatchdogSec"] == ["30"]
    assert d["Restart"] == ["on-failure"] and d["RestartPreventExitStatus"] == ["2"]
    assert d["User"] == ["mailgateway"]
    assert d["StateDirectory"] == ["mailgateway"] and d["ConfigurationDirectory"] == ["mailgateway"]
    assert d["ExecStart"] == ["/usr/bin/mailgateway run -c /etc/mailgateway/mailgateway.toml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["LoadCredential"] == ["mailgateway:/etc/mailgateway/credentials"]
    # The daemon drains for 20 s and gives IMAP watchers 10 s: systemd must wait longer.
    assert int(d["TimeoutStopSec"][0]) >= 40


def test_unit_bounds_descriptors_and_keeps_state_private() -> None:
    """~1,000 idle connections exhausted the default 1024 descriptors; the state
    directory (database, outbox) was readable by the group."""
    d = _directives(UNIT)
    assert int(d["LimitNOFILE"][0]) >= 4096
    assert d["StateDirectoryMode"] == ["0700"]
    assert _directives(HARDENING)["UMask"] == ["0077"]


def test_hardening_drop_in_has_the_sandbox() -> None:
    d = _directives(HARDENING)
    expected = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
        "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "UMask": "0077",
    }
    assert {k: d.get(k, [None])[0] for k in expected} == expected
    assert d["SystemCallFilter"][0] == "@system-service"


def test_sysusers_and_tmpfiles_apply_to_a_fresh_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    sysusers = subprocess.run([_tool("systemd-sysusers"), f"--root={tmp_path}",
                               str(SYSTEMD / "sysusers.d" / "mailgateway.conf")],
                              capture_output=True, text=True, timeout=60)
    assert sysusers.returncode == 0, sysusers.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^mailgateway:x:\d+:\d+:[^:]*:/var/lib/mailgateway:/usr/sbin/nologin$", passwd, re.M)
    tmpfiles = subprocess.run([_tool("systemd-tmpfiles"), "--create", f"--root={tmp_path}",
                               str(SYSTEMD / "tmpfiles.d" / "mailgateway.conf")],
                              capture_output=True, text=True, timeout=60)
    assert tmpfiles.returncode == 0, tmpfiles.stderr
    creds = tmp_path / "etc" / "mailgateway" / "credentials"
    assert creds.is_dir() and creds.stat().st_mode & 0o777 == 0o700


_MDWE_WORKLOAD = textwrap.dedent('''
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: the kernel's MemoryDenyWriteExecute=.
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("W+X mapping still allowed: the rule is not in force")
    except OSError:
        pass
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    import nacl.signing
    from mailgateway.dispatch.dkim import DkimKey, DkimSigner
    from mailgateway.dispatch.render import Renderer
    from mailgateway.store.engine import upgrade

    pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    signer = DkimSigner("ars.test", [DkimKey("r", "rsa-sha256", pem), DkimKey("e", "ed25519-sha256", ed)])
    msg = b"From: a@ars.test\\r\\nTo: b@chu.test\\r\\nSubject: x\\r\\n\\r\\nbody\\r\\n"
    assert signer.sign(msg).count(b"DKIM-Signature") == 2
    nacl.signing.SigningKey.generate().sign(b"x")
    upgrade("sqlite:///" + sys.argv[1])
    Renderer(None).check()
    print("ok")
''')


def test_gateway_native_code_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes would kill cffi ABI callbacks; our paths must not need them."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "prctl"):
        pytest.skip("no prctl")
    proc = subprocess.run([sys.executable, "-c", _MDWE_WORKLOAD, str(tmp_path / "mdwe.db")],
                          capture_output=True, text=True, timeout=120, cwd=SYSTEMD.parent)
    if proc.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
