"""The vendored uPlot: pinned version, MIT licence kept, files match their SHA-256 checksums, and
pages load nothing from outside the package."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from dashboard_support import RUN_A

import roll.dashboard
from roll.dashboard.pages import UPLOT

STATIC = Path(roll.dashboard.__file__).parent / "static"
VENDOR = STATIC / UPLOT
FILES = {"LICENSE", "uPlot.iife.min.js", "uPlot.min.css"}


def test_version_is_pinned_in_the_folder_name_and_the_file():
    version = re.fullmatch(r"vendor/uplot-(\d+\.\d+\.\d+)", UPLOT).group(1)
    assert (
        (VENDOR / "uPlot.iife.min.js")
        .read_text()
        .startswith(f"/*! https://github.com/leeoniya/uPlot (v{version}) */")
    )
    assert f"uplot@{version}" in (VENDOR / "SOURCE.md").read_text()


def test_licence_is_kept():
    licence = (VENDOR / "LICENSE").read_text()
    assert "The MIT License" in licence and "Leon Sorokin" in licence


def test_files_match_their_checksums():
    listed = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest
    assert set(listed) == FILES
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_pages_and_assets_reference_only_local_urls(client):
    pages = [client.get(p).text for p in ("/", f"/runs/{RUN_A}", "/validate")]
    assets = [p.read_text() for p in STATIC.glob("*.js")] + [p.read_text() for p in STATIC.glob("*.css")]
    for text in pages + assets:
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
        assert not re.search(r"""(fetch|import)\(\s*["'`]https?:""", text)
        assert "@import" not in text
    for page in pages:
        for url in re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", page):
            assert client.get(url).status_code == 200, url
