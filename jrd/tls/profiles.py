"""Device profiles that carry the local CA: an iOS/iPadOS `.mobileconfig`, and the CA export.

Installing the profile adds the CA; the user then turns on full trust under
Settings > General > About > Certificate Trust Settings.
"""

from __future__ import annotations

import plistlib
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jrd.tls import certs

if TYPE_CHECKING:
    from jrd.config import Config


def profile_label(config: "Config") -> str:
    """The name a device shows for the profile: the first configured host name, else the machine's."""
    return (config.tls.names or (socket.gethostname(),))[0]


def mobileconfig(ca: x509.Certificate, hostname: str) -> bytes:
    """An unsigned configuration profile with one root-certificate payload.

    The identifier and UUIDs derive from the CA's serial alone (never from a
    host name, which the config may change), so the same CA always gives the
    same profile and reinstalling it replaces rather than duplicates it.
    """
    der = ca.public_bytes(serialization.Encoding.DER)
    seed = uuid.UUID(int=ca.serial_number % (1 << 128))
    payload_uuid = str(uuid.uuid5(seed, "payload")).upper()
    profile_uuid = str(uuid.uuid5(seed, "profile")).upper()
    ident = f"jrd.ca.{seed.hex[:16]}"
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": profile_uuid,
        "PayloadDisplayName": f"jrd CA ({hostname})",
        "PayloadDescription": f"Trusts the local certificate authority of the Jupyter server on {hostname}.",
        "PayloadOrganization": "jrd",
        "PayloadContent": [
            {
                "PayloadType": "com.apple.security.root",
                "PayloadVersion": 1,
                "PayloadIdentifier": f"{ident}.root",
                "PayloadUUID": payload_uuid,
                "PayloadDisplayName": ca.subject.rfc4514_string(),
                "PayloadCertificateFileName": "jrd-ca.cer",
                "PayloadContent": der,
            }
        ],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def export_ca(ca: x509.Certificate, config: "Config", out: Path) -> dict[str, Path]:
    """Write the CA as PEM and as a .mobileconfig into `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"pem": out / "jrd-ca.pem", "mobileconfig": out / "jrd-ca.mobileconfig"}
    files["pem"].write_bytes(certs.pem(ca))
    files["mobileconfig"].write_bytes(mobileconfig(ca, profile_label(config)))
    return files
