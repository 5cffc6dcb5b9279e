"""Device profiles that carry the local CA: an iOS/iPadOS `.mobileconfig`.

Installing the profile adds the CA; the user then turns on full trust under
Settings > General > About > Certificate Trust Settings.
"""

from __future__ import annotations

import plistlib
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def mobileconfig(ca: x509.Certificate, hostname: str) -> bytes:
    """An unsigned configuration profile with one root-certificate payload.

    The UUIDs derive from the CA's serial, so the same CA always gives the
    same profile and reinstalling it replaces rather than duplicates it.
    """
    der = ca.public_bytes(serialization.Encoding.DER)
    seed = uuid.UUID(int=ca.serial_number % (1 << 128))
    payload_uuid = str(uuid.uuid5(seed, "payload")).upper()
    profile_uuid = str(uuid.uuid5(seed, "profile")).upper()
    ident = f"jrd.ca.{hostname}"
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
