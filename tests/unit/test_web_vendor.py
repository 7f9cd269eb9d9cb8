"""The scripts the web pages load are vendored, pinned files: each file under
``src/sluice/api/web/static/vendor`` is listed in its ``SHA256SUMS`` with the digest it has, so
a changed or added script cannot be served unnoticed; htmx is the version pinned (2.0.4, from the
npm registry's ``htmx.org-2.0.4.tgz``, ``dist/htmx.min.js``), and the pages load scripts from
this server only."""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files
from pathlib import Path

WEB = Path(str(files("sluice.api.web")))
VENDOR = WEB / "static" / "vendor"
HTMX_VERSION = "2.0.4"
# Files that are not served as code: the checksums themselves and the licences.
NOT_CODE = re.compile(r"^(SHA256SUMS|.*\.LICENSE)$")


def _sums() -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name.lstrip("*")] = digest
    return sums


def test_every_vendored_file_has_the_sha256_its_sums_file_records() -> None:
    sums = _sums()
    present = {p.name for p in VENDOR.iterdir() if p.is_file() and not NOT_CODE.match(p.name)}
    assert present == set(sums), "every vendored script, and only those, is listed"
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_htmx_is_the_pinned_version() -> None:
    body = (VENDOR / "htmx.min.js").read_text()
    assert f'version:"{HTMX_VERSION}"' in body
    assert _sums()["htmx.min.js"] == (
        "e209dda5c8235479f3166defc7750e1dbcd5a5c1808b7792fc2e6733768fb447"
    )


def test_the_templates_load_scripts_from_this_server_only_and_never_inline() -> None:
    for template in (WEB / "templates").rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert re.search(r'src="/static/vendor/[^"]+"', tag), (template.name, tag)
        assert "style=" not in text, template.name
