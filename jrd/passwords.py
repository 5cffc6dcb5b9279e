"""The login password: only its argon2 hash is ever stored (mode 0600).

jrd also keeps a private token that only it uses to ask Jupyter about
kernels and activity; it is never logged or shown.
"""

from __future__ import annotations

import getpass
import secrets
import sys
from pathlib import Path

from jrd.errors import JrdError, UsageError
from jrd.fsutil import atomic_write, ensure_dir

MIN_LENGTH = 8


def read_new_password(from_stdin: bool, command: str) -> str:
    """A new password from standard input, or asked twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise UsageError(f"no terminal to ask for the password on; pipe it in with `{command} --stdin`")
    password = getpass.getpass("New Jupyter password: ")
    if getpass.getpass("Again: ") != password:
        raise UsageError("the two passwords differ; nothing was changed")
    return password


def hash_password(password: str) -> str:
    """An argon2 hash in the form PasswordIdentityProvider.hashed_password takes."""
    from jupyter_server.auth import passwd  # slow import: only when needed

    if len(password) < MIN_LENGTH:
        raise JrdError(f"the password is too short: use at least {MIN_LENGTH} characters")
    return passwd(password, algorithm="argon2")


def write_password_hash(path: Path, hashed: str) -> None:
    ensure_dir(path.parent, 0o700, force=False)
    atomic_write(path, hashed + "\n", 0o600)


def read_password_hash(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text.startswith(("argon2:", "sha1:")):
        raise JrdError(f"{path}: not a password hash; set a new password with `jrd passwd`")
    return text


def random_password() -> str:
    """A password that is easy to type on a tablet: four groups of five."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(4))


def ensure_internal_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
        if len(token) >= 32:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_hex(32)
    ensure_dir(path.parent, 0o700, force=False)
    atomic_write(path, token + "\n", 0o600)
    return token


def ensure_initial_password(password_file: Path, initial_file: Path, show: bool) -> str:
    """Make a random first password if none is set; what to tell the person (never logged)."""
    if read_password_hash(password_file) is not None:
        if initial_file.exists():
            return f"Log in with the password in {initial_file} (change it with `jrd passwd`)."
        return "Log in with the password you set (change it with `jrd passwd`)."
    password = random_password()
    write_password_hash(password_file, hash_password(password))
    atomic_write(initial_file, password + "\n", 0o600)
    if show:
        return (
            f"Log in with the password  {password}  (shown this once; also in "
            f"{initial_file}, readable by root only). Change it with `jrd passwd`."
        )
    return (
        f"A login password was generated and saved in {initial_file} "
        "(readable by root only); change it with `jrd passwd`."
    )
