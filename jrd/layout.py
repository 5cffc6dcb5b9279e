"""Where every file jrd reads or writes lives, derived from [paths].

One place names the files, so that the renderers, the daemon and the CLIs
agree on them without passing paths around one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jrd.config import Config


@dataclass(frozen=True)
class Layout:
    state_dir: Path
    runtime_dir: Path
    log_dir: Path

    @classmethod
    def of(cls, config: Config) -> "Layout":
        p = config.paths
        return cls(p.state_dir, p.runtime_dir, p.log_dir)

    # state: kept across restarts
    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca-key.pem"

    @property
    def leaf_cert(self) -> Path:
        """The leaf certificate followed by the CA: the chain nginx serves."""
        return self.tls_dir / "server.pem"

    @property
    def leaf_key(self) -> Path:
        return self.tls_dir / "server-key.pem"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "password"

    @property
    def initial_password_file(self) -> Path:
        return self.state_dir / "initial-password"

    @property
    def internal_token_file(self) -> Path:
        return self.state_dir / "internal-token"

    @property
    def acme_dir(self) -> Path:
        """The ACME account key and the certificates ordered with it (jrd.tls.acme)."""
        return self.state_dir / "acme"

    # runtime: regenerated at every start
    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "jrd.lock"

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / "control.sock"

    @property
    def supervisor_dir(self) -> Path:
        return self.runtime_dir / "supervisor"

    @property
    def supervisor_socket(self) -> Path:
        return self.supervisor_dir / "supervisor.sock"

    @property
    def supervisord_conf(self) -> Path:
        return self.supervisor_dir / "supervisord.conf"

    @property
    def nginx_dir(self) -> Path:
        return self.runtime_dir / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.nginx_dir / "nginx.conf"

    @property
    def nginx_temp_dir(self) -> Path:
        return self.nginx_dir / "temp"

    @property
    def nginx_public_dir(self) -> Path:
        """Files nginx serves itself (the public CA certificate and profile)."""
        return self.nginx_dir / "public"

    @property
    def acme_challenge_dir(self) -> Path:
        """http-01 tokens, which nginx serves under /.well-known/acme-challenge/."""
        return self.nginx_dir / "acme-challenge"

    @property
    def nginx_status_socket(self) -> Path:
        """nginx's stub_status, for jrd's probes and metrics: in supervisord's 0700 dir, out of other users' reach.

        nginx's master binds it (as root when jrd runs as root) before its workers
        drop to their account; the workers inherit the listening socket, so they
        never need to reach the path.  nginx makes the socket with the umask's mode
        (0666 under supervisord): the directory is what keeps other accounts out.
        """
        return self.supervisor_dir / "nginx-status.sock"

    @property
    def nginx_pid_file(self) -> Path:
        return self.nginx_dir / "nginx.pid"

    @property
    def events_socket(self) -> Path:
        """Where the event listener forwards supervisord's events; in supervisord's 0700 dir."""
        return self.supervisor_dir / "events.sock"

    @property
    def staging_dir(self) -> Path:
        """Where a reload renders and tests files before installing them."""
        return self.runtime_dir / "staging"

    @property
    def jupyter_dir(self) -> Path:
        return self.runtime_dir / "jupyter"

    @property
    def jupyter_conf(self) -> Path:
        return self.jupyter_dir / "jupyter_server_config.py"

    @property
    def collaboration_dir(self) -> Path:
        """Server-side execution's document store, sessions and file ids: the Jupyter account's, in its 0700 dir."""
        return self.jupyter_dir / "collaboration"

    @property
    def gateway_token(self) -> Path:
        """The gateway's token as Jupyter reads it at start: a copy in the Jupyter account's 0700 dir."""
        return self.jupyter_dir / "gateway-token"

    def log_file(self, program: str) -> Path:
        return self.log_dir / f"{program}.log"
