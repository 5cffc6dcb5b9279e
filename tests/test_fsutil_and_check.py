"""Atomic writes, and `jrd check` against the real nginx."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from jrd.fsutil import atomic_write

from conftest import JRD, Jrd


def test_atomic_write_reports_change_and_sets_mode(tmp_path: Path) -> None:
    f = tmp_path / "a.conf"
    assert atomic_write(f, "one", 0o600) is True
    assert f.read_text() == "one"
    assert f.stat().st_mode & 0o777 == 0o600
    inode = f.stat().st_ino
    assert atomic_write(f, "one", 0o600) is False
    assert f.stat().st_ino == inode  # untouched when nothing changed
    assert atomic_write(f, "one", 0o644) is True  # a mode change is a change
    assert atomic_write(f, "two", 0o644) is True
    assert f.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.conf"]  # no temp files left


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    f = tmp_path / "a.conf"
    atomic_write(f, "old")
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() == 0:
            # root ignores directory permissions; simulate with a missing directory instead
            os.chmod(tmp_path, 0o700)
            try:
                atomic_write(tmp_path / "missing" / "a.conf", "new")
            except FileNotFoundError:
                pass
        else:
            try:
                atomic_write(f, "new")
            except PermissionError:
                pass
    finally:
        os.chmod(tmp_path, 0o700)
    assert f.read_text() == "old"


def test_ensure_dir_never_follows_a_symlink(tmp_path: Path) -> None:
    from jrd.errors import JrdError
    from jrd.fsutil import ensure_dir

    target = tmp_path / "precious"
    target.mkdir(mode=0o755)
    link = tmp_path / "runtime"
    link.symlink_to(target)
    import pytest

    with pytest.raises(JrdError, match="symlink"):
        ensure_dir(link, 0o700, (65534, 65534))
    st = target.stat()
    assert st.st_mode & 0o777 == 0o755 and st.st_uid == os.geteuid()


def test_ensure_dir_leaves_an_existing_shared_dir_alone(tmp_path: Path) -> None:
    from jrd.fsutil import ensure_dir

    shared = tmp_path / "var-log"
    shared.mkdir(mode=0o755)
    ensure_dir(shared, 0o700, force=False)
    assert shared.stat().st_mode & 0o777 == 0o755
    fresh = ensure_dir(tmp_path / "new", 0o700, force=False)
    assert fresh.stat().st_mode & 0o777 == 0o700


def test_check_accepts_a_good_config_and_creates_nothing(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd()
    res = j.jrd("check")
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout
    assert not j.state.exists() and not j.run_dir.exists() and not j.notebooks.exists()


def rejecting_nginx(where: Path) -> Path:
    """A real nginx that refuses every config it is given: what jrd's validators cannot foresee."""
    wrapper = where / "nginx-rejecting"
    real = shutil.which("nginx") or "/usr/sbin/nginx"
    wrapper.write_text(f"#!/bin/sh\nexec {real} -g 'jrd_unforeseen_directive on;' \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def test_check_shows_nginx_message_when_nginx_rejects(make_jrd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd()
    j.write_config(nginx=f'binary = "{rejecting_nginx(tmp_path)}"\n')
    res = j.jrd("check")
    assert res.returncode == 4
    assert "nginx rejected the rendered config" in res.stderr
    assert "jrd_unforeseen_directive" in res.stderr  # nginx's own words
    assert "Traceback" not in res.stderr


def test_run_with_config_nginx_rejects_starts_nothing(make_jrd, tmp_path: Path) -> None:  # type: ignore
    j: Jrd = make_jrd()
    j.write_config(nginx=f'binary = "{rejecting_nginx(tmp_path)}"\n')
    j.set_password()
    res = j.jrd("run")
    assert res.returncode == 4
    assert "nginx rejected" in res.stderr
    out = subprocess.run(["pgrep", "-f", str(j.run_dir)], capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_check_refuses_corrupt_external_certificate(make_jrd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd()
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    key.write_text("not a key")
    j.write_config(tls=f'cert_file = "{cert}"\nkey_file = "{key}"\n')
    res = subprocess.run([JRD, "check", "--config", str(j.config_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 5
    assert str(cert) in res.stderr
    assert "Traceback" not in res.stderr


def test_check_refuses_unreadable_external_certificate(make_jrd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd()
    cert_dir = tmp_path / "fullchain.pem"
    cert_dir.mkdir()  # a directory where a file belongs
    key = tmp_path / "privkey.pem"
    key.write_text("x")
    j.write_config(tls=f'cert_file = "{cert_dir}"\nkey_file = "{key}"\n')
    res = j.jrd("check")
    assert res.returncode == 5, res.stderr
    assert "cannot read certificate" in res.stderr and "Traceback" not in res.stderr


def test_check_refuses_what_supervisord_would_refuse(tmp_path: Path) -> None:
    from jrd.build import check_supervisord_conf
    from jrd.errors import ConfigError

    with pytest.raises(ConfigError, match="supervisord would refuse the rendered config: Invalid user name"):
        check_supervisord_conf(b"[supervisord]\n[program:x]\ncommand = /bin/true\nuser = nosuchuser-jrd\n", tmp_path)
    check_supervisord_conf(b"[supervisord]\n[program:x]\ncommand = /bin/true\n", tmp_path)


def test_check_names_a_busy_port_when_jrd_is_not_running(make_jrd) -> None:  # type: ignore[no-untyped-def]
    import socket

    j: Jrd = make_jrd()
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", j.port))
        busy.listen()
        res = j.jrd("check")
    assert res.returncode == 3, res.stderr
    assert f"port {j.port}" in res.stderr and f"pid {os.getpid()}" in res.stderr


def test_check_of_a_running_jrd_is_ok(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd()
    j.start()
    res = j.jrd("check")
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


def test_a_directory_the_jupyter_account_cannot_enter_is_named_before_jupyter_fails() -> None:
    """Jupyter would die with EACCES (`couldn't chdir`); jrd names the directory in its way instead."""
    import pwd
    import tempfile

    from jrd import preflight
    from jrd.errors import PreflightError
    from jrd.render import Account

    from conftest import ensure_test_user

    if os.geteuid() != 0:
        pytest.skip("needs root, to judge for another account")
    pw = pwd.getpwnam(ensure_test_user())
    acct = Account(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    base = Path(tempfile.mkdtemp(prefix="jrd-reach-", dir="/tmp"))
    try:
        base.chmod(0o755)
        closed = base / "home"
        closed.mkdir(mode=0o700)
        notebooks = closed / "jrd" / "notebooks"
        assert preflight.closed_to(notebooks, acct) == closed
        assert preflight.closed_to(base / "elsewhere", acct) is None
        with pytest.raises(PreflightError, match=f"cannot reach \\[jupyter\\] root_dir {notebooks}: it may not "
                                                 f"enter {closed} \\(mode 0700, owner root\\)"):
            preflight.check_jupyter_reach(notebooks, Path(os.__file__), acct)
        os.chown(closed, pw.pw_uid, -1)  # its owner may enter
        assert preflight.closed_to(notebooks, acct) is None
        closed.chmod(0o701)
        os.chown(closed, 0, -1)  # others may pass through, without listing it
        assert preflight.closed_to(notebooks, acct) is None
        assert preflight.closed_to(notebooks, Account("root", 0, 0, Path("/root"))) is None
    finally:
        shutil.rmtree(base)
