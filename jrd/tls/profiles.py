"""Device profiles that carry the local CA: an iOS/iPadOS `.mobileconfig`, and the CA export.

Installing the profile adds the CA; the user then turns on full trust under
Settings > General > About > Certificate Trust Settings.
"""

from __future__ import annotations

import plistlib
import socket
import textwrap
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


# How to trust the CA, per platform: the one text that the README's "Trusting the CA on your
# devices" shows (tests/test_readme.py keeps it equal) and that `jrd init` prints.
TRUST_STEPS: tuple[tuple[str, str], ...] = (
    ("iPadOS / iOS",
     "open `jrd-ca.mobileconfig` (from Safari, AirDrop or Files); Settings shows \"Profile Downloaded\": "
     "Settings → General → VPN & Device Management → the jrd profile → Install. Then turn on full trust: "
     "Settings → General → About → Certificate Trust Settings → enable \"jrd CA …\". Safari, Chrome and the "
     "Jupyter apps all use this."),
    ("macOS",
     "double-click `jrd-ca.pem` to add it to the login keychain, open it in Keychain Access, expand \"Trust\" "
     "and set \"When using this certificate\" to \"Always Trust\". Or: `sudo security add-trusted-cert -d -r "
     "trustRoot -k /Library/Keychains/System.keychain jrd-ca.pem`."),
    ("Windows",
     "rename to `jrd-ca.crt`, double-click → Install Certificate → Current User → \"Place all certificates in "
     "the following store\" → Trusted Root Certification Authorities. Or, in an admin PowerShell: "
     "`Import-Certificate -FilePath jrd-ca.pem -CertStoreLocation Cert:\\LocalMachine\\Root`."),
    ("Linux (Debian/Ubuntu)",
     "`sudo cp jrd-ca.pem /usr/local/share/ca-certificates/jrd-ca.crt && sudo update-ca-certificates`. "
     "Chrome and Chromium on Linux use their own NSS store: "
     "`certutil -d sql:$HOME/.pki/nssdb -A -t \"C,,\" -n \"jrd CA\" -i jrd-ca.pem`."),
    ("Firefox",
     "(any system) keeps its own store: Settings → Privacy & Security → Certificates → View Certificates → "
     "Authorities → Import → `jrd-ca.pem`, tick \"Trust this CA to identify websites\"."),
)


def _fill(text: str, width: int, first: str, rest: str) -> str:
    """Wrap `text`, never inside a `code span`, so that a command is copied whole."""
    parts = text.split("`")
    glued = "`".join(p.replace(" ", "\0") if i % 2 else p for i, p in enumerate(parts))
    return textwrap.fill(glued, width, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                         break_on_hyphens=False).replace("\0", " ")


def _step_line(platform: str, text: str) -> str:
    # "Firefox (any system) keeps ...": a step that goes on from its name takes no colon.
    return f"{platform} {text}" if text.startswith("(") else f"{platform}: {text}"


def trust_steps_markdown() -> str:
    """The per-platform steps as the README's bullet list."""
    items = []
    for platform, text in TRUST_STEPS:
        line = _step_line(f"**{platform}**", text)
        items.append(_fill(line, 80, "- ", "  "))
    return "\n".join(items)


def trust_steps_text(width: int = 100) -> str:
    """The per-platform steps for a terminal."""
    return "\n".join(_fill(_step_line(platform, text), width, "  - ", "    ") for platform, text in TRUST_STEPS)
