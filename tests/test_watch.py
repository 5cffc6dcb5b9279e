"""The file watcher.  The debounce timing is pure and runs on a fake
clock; the save patterns run on real files with real inotify, against a fake
daemon that only records the commands it is given."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from jrd.config import parse_config
from jrd.watch import ConfigWatcher, Debouncer, relevant, resolution_chain, watch_dirs, watched_files

# --- the debouncer, on a fake clock ------------------------------------------------------


def test_no_events_means_nothing_due() -> None:
    d = Debouncer(quiet=0.1, write_grace=1.0, max_delay=2.0)
    assert d.deadline() is None
    assert not d.due(100.0)


def test_a_burst_is_due_once_after_it_goes_quiet() -> None:
    d = Debouncer(quiet=0.1, write_grace=1.0, max_delay=2.0)
    for t in (10.0, 10.02, 10.05):
        d.note(t)
    assert not d.due(10.1)
    assert d.deadline() == pytest.approx(10.15)
    assert d.due(10.15)
    assert not d.due(10.2), "a burst fires once"
    assert d.deadline() is None


def test_an_unclosed_write_waits_for_its_close() -> None:
    d = Debouncer(quiet=0.1, write_grace=1.0, max_delay=2.0)
    d.note(5.0, settled=False)  # modified, not closed yet: maybe half a file
    assert not d.due(5.5)
    d.note(5.6, settled=True)  # closed
    assert d.due(5.7)


def test_an_unclosed_write_is_given_up_on_after_the_grace() -> None:
    d = Debouncer(quiet=0.1, write_grace=1.0, max_delay=2.0)
    d.note(5.0, settled=False)
    assert not d.due(5.99)
    assert d.due(6.0)


def test_a_never_ending_burst_still_fires_at_the_max_delay() -> None:
    d = Debouncer(quiet=0.1, write_grace=1.0, max_delay=2.0)
    t = 0.0
    fired = []
    while t < 5.0:
        d.note(t)
        if d.due(t + 0.01):
            fired.append(t)
        t += 0.05
    assert fired and fired[0] == pytest.approx(1.95, abs=0.06)
    assert len(fired) == 2  # one per max_delay while events keep coming


def test_a_new_burst_after_firing_starts_fresh() -> None:
    d = Debouncer(quiet=0.1, write_grace=1.0, max_delay=2.0)
    d.note(1.0)
    assert d.due(1.2)
    d.note(3.0)
    assert d.deadline() == pytest.approx(3.1)


# --- which paths matter ----------------------------------------------------------------------


def test_chain_of_a_plain_file_is_the_file(tmp_path: Path) -> None:
    f = tmp_path / "jrd.toml"
    f.write_text("")
    assert resolution_chain(f) == [f]


def test_chain_follows_a_configmap_layout(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    (cfg / "..2024_01").mkdir(parents=True)
    (cfg / "..2024_01" / "jrd.toml").write_text("")
    (cfg / "..data").symlink_to("..2024_01")
    (cfg / "jrd.toml").symlink_to("..data/jrd.toml")
    chain = resolution_chain(cfg / "jrd.toml")
    assert chain == [cfg / "jrd.toml", cfg / "..data", cfg / "..2024_01" / "jrd.toml"]
    assert watch_dirs([chain]) == {cfg, cfg / "..2024_01"}
    assert relevant([str(cfg / "..data")], [chain])
    assert relevant([str(cfg / "..2024_01")], [chain]), "deleting the old version dir matters"
    assert not relevant([str(cfg / "..data_tmp"), str(cfg / "..2024_02")], [chain])


def test_chain_follows_certbot_live_links(tmp_path: Path) -> None:
    archive = tmp_path / "archive" / "host"
    live = tmp_path / "live" / "host"
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    (archive / "fullchain1.pem").write_text("")
    (live / "fullchain.pem").symlink_to("../../archive/host/fullchain1.pem")
    chain = resolution_chain(live / "fullchain.pem")
    assert chain == [live / "fullchain.pem", archive / "fullchain1.pem"]
    assert watch_dirs([chain]) == {live, archive}


def test_chain_of_a_missing_file_watches_the_nearest_existing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "deeper" / "jrd.toml"
    chain = resolution_chain(missing)
    assert chain == [missing]
    assert watch_dirs([chain]) == {tmp_path}
    assert relevant([str(tmp_path / "gone")], [chain])


def test_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert len(resolution_chain(tmp_path / "a")) <= 42


def test_watched_files_follow_the_config(tmp_path: Path) -> None:
    text = f'[paths]\nstate_dir = "{tmp_path}/state"\n'
    cfg = parse_config(text, source=tmp_path / "jrd.toml")
    assert watched_files(cfg) == [tmp_path / "jrd.toml", tmp_path / "state" / "password"]
    cfg = parse_config(text + f'[tls]\ncert_file = "{tmp_path}/c.pem"\nkey_file = "{tmp_path}/k.pem"\n',
                       source=tmp_path / "jrd.toml")
    assert watched_files(cfg)[2:] == [tmp_path / "c.pem", tmp_path / "k.pem"]
    token = tmp_path / "gateway-token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    gateway = f'[gateway]\nauth_token_file = "{token}"\n'
    # The token file only while the gateway is on: a new token is a reload (and a Jupyter restart).
    assert token not in watched_files(parse_config(text + gateway, source=tmp_path / "jrd.toml"))
    cfg = parse_config(text + gateway + 'url = "http://127.0.0.1:8888"\n', source=tmp_path / "jrd.toml")
    assert watched_files(cfg)[2:] == [token]


# --- the watcher on real files, with a fake daemon ---------------------------------------------

QUIET = 0.05


class FakeDaemon:
    """Only what the watcher uses of its Context: the config and the command path."""

    def __init__(self, config):  # type: ignore[no-untyped-def]
        self.config = config
        self.submitted: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def submit(self, name: str, source: str, **args: object) -> None:
        with self._lock:
            self.submitted.append((name, source))


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    state.mkdir()
    (state / "password").write_text("argon2:one\n")
    conf = tmp_path / "etc" / "jrd.toml"
    conf.parent.mkdir()
    conf.write_text(config_text(tmp_path, 1))
    cfg = parse_config(conf.read_text(), source=conf)
    daemon = FakeDaemon(cfg)
    watcher = ConfigWatcher(debouncer=Debouncer(quiet=QUIET, write_grace=0.5, max_delay=1.0))
    watcher.start(daemon)  # type: ignore[arg-type]
    yield tmp_path, conf, daemon, watcher
    watcher.stop()


def config_text(base: Path, n: int, extra: str = "") -> str:
    return f'[paths]\nstate_dir = "{base}/state"\n[nginx]\nport = {8000 + n}\n{extra}'


def settled(daemon: FakeDaemon, watcher: ConfigWatcher, count: int) -> list[tuple[str, str]]:
    """Wait for `count` reloads, then long enough that a late one would show."""
    if count:
        wait_for(lambda: len(daemon.submitted) >= count, 10, f"{count} reload(s)")
    time.sleep(QUIET * 6)  # proving an absence: nothing more arrives after the burst
    wait_for(lambda: watcher._debouncer.deadline() is None, 5, "the watcher to go quiet")
    return list(daemon.submitted)


def test_atomic_rename_is_one_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    tmp = conf.with_name(".jrd.toml.swp")
    tmp.write_text(config_text(base, 2))
    os.replace(tmp, conf)
    assert settled(daemon, watcher, 1) == [("reload", f"file:{conf}")]


def test_vim_style_backup_rename_write_delete_is_one_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    backup = conf.with_name("jrd.toml~")
    os.rename(conf, backup)
    with open(conf, "w") as f:
        f.write(config_text(base, 3))
        f.flush()
        os.fsync(f.fileno())
    backup.unlink()
    assert len(settled(daemon, watcher, 1)) == 1


def test_truncate_and_write_is_one_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    with open(conf, "r+") as f:
        f.truncate(0)
        f.write(config_text(base, 4))
    assert len(settled(daemon, watcher, 1)) == 1


def test_slow_writer_is_not_read_half_written(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    with open(conf, "w") as f:
        f.write("[paths]\n")
        f.flush()
        time.sleep(QUIET * 4)  # a writer that pauses mid-file, longer than the quiet period
        f.write(config_text(base, 5)[len("[paths]\n"):])
    assert len(settled(daemon, watcher, 1)) == 1


def test_delete_and_recreate_is_one_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    conf.unlink()
    conf.write_text(config_text(base, 6))
    assert len(settled(daemon, watcher, 1)) == 1


def test_unchanged_content_is_no_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    conf.write_text(conf.read_text())
    os.utime(conf)
    assert settled(daemon, watcher, 0) == []


def test_deleted_file_is_logged_not_reloaded_and_its_return_reloads(setup, caplog) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    caplog.set_level(logging.ERROR, logger="jrd")
    conf.unlink()

    def logged() -> int:
        return sum("disappeared" in r.getMessage() and str(conf) in r.getMessage() for r in caplog.records)

    wait_for(logged, 5, "the disappearance to be logged")
    assert settled(daemon, watcher, 0) == []
    assert logged() == 1
    conf.write_text(config_text(base, 7))
    assert len(settled(daemon, watcher, 1)) == 1


def test_deleted_directory_comes_back(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    shutil.rmtree(conf.parent)
    assert settled(daemon, watcher, 0) == []
    conf.parent.mkdir()
    conf.write_text(config_text(base, 8))
    assert len(settled(daemon, watcher, 1)) == 1
    conf.write_text(config_text(base, 9))  # the new directory is watched too
    assert len(settled(daemon, watcher, 2)) == 2


def test_configmap_symlink_flip_is_one_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    # Turn the config into a ConfigMap-style mount (itself one change).
    v1 = conf.parent / "..v1"
    v1.mkdir()
    (v1 / "jrd.toml").write_text(config_text(base, 10))
    (conf.parent / "..data").symlink_to("..v1")
    tmp = conf.parent / ".jrd.toml.link"
    tmp.symlink_to("..data/jrd.toml")
    os.replace(tmp, conf)
    assert len(settled(daemon, watcher, 1)) == 1
    # What the kubelet does on an update: new dir, new ..data link renamed over, old dir removed.
    v2 = conf.parent / "..v2"
    v2.mkdir()
    (v2 / "jrd.toml").write_text(config_text(base, 11))
    (conf.parent / "..data_tmp").symlink_to("..v2")
    os.replace(conf.parent / "..data_tmp", conf.parent / "..data")
    shutil.rmtree(v1)
    assert len(settled(daemon, watcher, 2)) == 2
    # ... and the next update is seen through the new directory too.
    (v2 / "jrd.toml").write_text(config_text(base, 12))
    assert len(settled(daemon, watcher, 3)) == 3


def test_password_file_change_is_a_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    pw = base / "state" / "password"
    tmp = pw.with_name(".password.tmp")
    tmp.write_text("argon2:two\n")
    os.replace(tmp, pw)
    assert settled(daemon, watcher, 1) == [("reload", f"file:{pw}")]


def test_fifty_rapid_writes_are_one_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    for n in range(50):
        conf.write_text(config_text(base, 100 + n))
    assert len(settled(daemon, watcher, 1)) == 1


def test_added_certificate_files_are_watched_after_a_reload(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    archive, live = base / "le" / "archive" / "h", base / "le" / "live" / "h"
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    for name in ("fullchain", "privkey"):
        (archive / f"{name}1.pem").write_text(f"{name} 1")
        (live / f"{name}.pem").symlink_to(f"../../archive/h/{name}1.pem")
    text = config_text(base, 13, f'[tls]\ncert_file = "{live}/fullchain.pem"\nkey_file = "{live}/privkey.pem"\n')
    conf.write_text(text)
    assert len(settled(daemon, watcher, 1)) == 1
    new = parse_config(text, source=conf)
    watcher.config_changed(daemon.config, new)
    daemon.config = new
    wait_for(lambda: archive in watcher.watched and live in watcher.watched, 5,
             "the certificate directories to be watched")
    # certbot's renewal: new archive files, then both live links flipped.
    for name in ("fullchain", "privkey"):
        (archive / f"{name}2.pem").write_text(f"{name} 2")
    for name in ("fullchain", "privkey"):
        link = live / f"{name}.pem"
        link.unlink()
        link.symlink_to(f"../../archive/h/{name}2.pem")
    submitted = settled(daemon, watcher, 2)
    assert len(submitted) == 2
    assert "fullchain.pem" in submitted[1][1] and "privkey.pem" in submitted[1][1]


def test_a_broken_daemon_submit_does_not_kill_the_watcher(setup) -> None:  # type: ignore[no-untyped-def]
    base, conf, daemon, watcher = setup
    calls = []

    def boom(name: str, source: str, **args: object) -> None:
        calls.append(source)
        raise RuntimeError("queue is gone")

    daemon.submit = boom  # type: ignore[method-assign]
    conf.write_text(config_text(base, 14))
    wait_for(lambda: calls, 5, "a submit")
    conf.write_text(config_text(base, 15))
    wait_for(lambda: len(calls) == 2, 5, "a second submit after the error")
