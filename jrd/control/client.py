"""The control socket's client: find the socket, send one request, turn failures into advice."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import socket
import stat
import tomllib
from pathlib import Path
from typing import Any

from jrd import config as config_module
from jrd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, dev_defaults, system_defaults
from jrd.control import protocol
from jrd.control.commands import command_timeout
from jrd.errors import ControlError, ControlPermissionDenied, DaemonNotRunning, JrdError
from jrd.layout import Layout


def request(path: Path, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
    """Send one request to the daemon and return its result, or raise a JrdError that says what to do.

    `timeout` bounds the whole exchange; by default a little longer than the server waits for the command.
    """
    args = args or {}
    timeout = timeout if timeout is not None else command_timeout(command, args) + 10
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise DaemonNotRunning(
                f"jrd is not running (no socket at {path}); start it with `systemctl start jrd`") from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(
                f"jrd is not running (nothing answers on {path}); start it with `systemctl start jrd`") from None
        except PermissionError:
            raise ControlPermissionDenied(permission_advice(path)) from None
        except OSError as exc:
            raise JrdError(f"cannot reach jrd at {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(protocol.encode_request(command, args))
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise JrdError(f"jrd did not answer {command} within {timeout:.0f} s; see `journalctl -u jrd`") from None
        except OSError as exc:
            raise JrdError(f"the connection to jrd broke during {command} ({exc.strerror or exc})") from None
    finally:
        sock.close()
    if not data:
        raise JrdError(f"jrd closed the connection without answering {command}; is it shutting down?")
    try:
        answer = json.loads(data)
    except ValueError:
        raise JrdError(f"jrd answered {command} with something that is not JSON: {bytes(data[:80])!r}") from None
    if not isinstance(answer, dict):
        raise JrdError(f"jrd answered {command} with {answer!r} instead of an object")
    if not answer.get("ok"):
        err = ControlError(answer.get("error") or "jrd refused the request")
        # jrdctl's own codes: the daemon's error classes would collide with them
        err.exit_code = protocol.EXIT_USAGE if answer.get("exit_code") == protocol.EXIT_USAGE else protocol.EXIT_FAILED
        raise err
    return answer.get("result")


def permission_advice(path: Path) -> str:
    """Who may use the control socket, in one sentence."""
    try:
        st = os.stat(path)
    except PermissionError:
        return (f"permission denied on {path}: its directory is not open to you; "
                "only root (or the account jrd runs as) may use jrdctl")
    owner = _user_name(st.st_uid)
    if st.st_mode & stat.S_IWGRP:
        group = _group_name(st.st_gid)
        return (f"permission denied on {path}: only {owner} and members of group {group!r} may use jrdctl "
                f"(an admin can add you with `usermod -aG {group} {_user_name(os.geteuid())}`)")
    return (f"permission denied on {path}: only {owner} may use jrdctl "
            "(to share it, set [control] group in the config and add users to that group)")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# --- finding the socket ------------------------------------------------------------------------


def config_for_client(config_path: Path | None = None, dev: bool = False) -> Config:
    """The config as `jrd` resolves it (config.resolve_config), falling back to the system defaults.

    Without a config path, an absent or unreadable system config means the
    system defaults: a member of the control group may not read the file.
    """
    if dev or config_path:
        return config_module.resolve_config(config_path, dev)
    try:
        return config_module.resolve_config(None, False)
    except ConfigError:
        if DEFAULT_CONFIG_PATH.is_file() and _readable(DEFAULT_CONFIG_PATH):
            raise
        return system_defaults()


def find_socket(socket_path: Path | None = None, config_path: Path | None = None, dev: bool = False) -> Path:
    """The control socket: `socket_path` if given, else the config's [paths] runtime_dir.

    A config that does not validate (mid-edit, or just refused by a reload)
    still names the runtime dir of the daemon that runs on the previous one,
    so that one key is read leniently rather than failing.
    """
    if socket_path:
        return Path(socket_path)
    try:
        return Layout.of(config_for_client(config_path, dev)).control_socket
    except ConfigError as exc:
        path = config_path or DEFAULT_CONFIG_PATH
        base = dev_defaults(Path.cwd()) if dev else system_defaults()
        try:
            text = path.read_text(errors="replace")
        except OSError:
            raise exc from None
        runtime = lenient_runtime_dir(text) or base.paths.runtime_dir
        return Layout(base.paths.state_dir, runtime, base.paths.log_dir).control_socket


def lenient_runtime_dir(text: str) -> Path | None:
    """[paths] runtime_dir from config text that may be invalid TOML."""
    try:
        value = tomllib.loads(text).get("paths", {}).get("runtime_dir")
    except tomllib.TOMLDecodeError:
        match = re.search(r"""^\s*runtime_dir\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
        value = match.group(1) if match else None
    return Path(value).expanduser() if isinstance(value, str) and value else None


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False
