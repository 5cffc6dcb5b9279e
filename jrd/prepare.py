"""Bootstrap of the TLS files nginx serves: jrd's own CA and leaf, or an external pair."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from jrd import certs
from jrd.config import Config
from jrd.layout import Layout


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca_pem: bytes | None


def ensure_own_tls(config: Config, layout: Layout, now: dt.datetime) -> tuple[TlsFiles, str | None]:
    """Make sure jrd's CA and a current leaf exist; returns the files and why a leaf was issued."""
    ca_cert, ca_key, _ = certs.ensure_ca(layout.ca_cert, layout.ca_key, dt.timedelta(days=config.tls.ca_lifetime_days), now)
    policy = certs.policy_from_config(config)
    leaf = certs.current_leaf(layout.leaf_cert, layout.leaf_key)
    reason = None
    if leaf is None:
        reason = "no usable leaf certificate"
    else:
        decision = certs.renewal_due(leaf, now, policy, ca_cert)
        if decision.due:
            reason = decision.reason
    if reason:
        certs.issue_leaf(ca_cert, ca_key, policy, layout.leaf_cert, layout.leaf_key, now)
    return TlsFiles(layout.leaf_cert, layout.leaf_key, certs.pem(ca_cert)), reason


def external_tls(config: Config) -> TlsFiles:
    assert config.tls.cert_file and config.tls.key_file
    certs.load_pair(config.tls.cert_file, config.tls.key_file)
    return TlsFiles(config.tls.cert_file, config.tls.key_file, None)
