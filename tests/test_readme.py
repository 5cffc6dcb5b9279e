"""The README's module map lists exactly the modules there are, each with its one-line concern."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def map_entries() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- module-map -->", 1)[1].split("```", 2)[1]
    entries, stack = {}, []
    for line in block.splitlines()[2:]:
        match = re.match(r"^([│ ]*)[├└]── (\S+)\s*(.*)$", line)
        assert match, f"not a tree line: {line!r}"
        depth = len(match.group(1)) // 4
        name, concern = match.group(2), match.group(3).strip()
        stack[depth:] = [name.rstrip("/")]
        entries["jrd/" + "/".join(stack) + ("/" if name.endswith("/") else "")] = concern
    return entries


def test_every_module_is_in_the_map_with_a_concern_and_nothing_else() -> None:
    entries = map_entries()
    modules = {str(p.relative_to(REPO)) for p in (REPO / "jrd").rglob("*.py")}
    packages = {str(p.parent.relative_to(REPO)) + "/" for p in (REPO / "jrd").rglob("__init__.py")} - {"jrd/"}
    assert set(entries) == modules | packages
    assert all(entries.values()), [name for name, concern in entries.items() if not concern]


def test_device_trust_steps_are_the_ones_jrd_init_prints() -> None:
    """One text for trusting the CA on each kind of device: jrd.tls.profiles, shown by the README and `jrd init`."""
    from jrd.tls import profiles

    assert profiles.trust_steps_markdown() in (REPO / "README.md").read_text(), (
        "the README's per-platform steps differ from jrd.tls.profiles.TRUST_STEPS; paste the output of "
        "`python -c 'from jrd.tls import profiles; print(profiles.trust_steps_markdown())'`")
