"""MkDocs hook: ships Mermaid with the site, so that its diagrams render with no network.

mkdocs-material draws a ```` ```mermaid ```` block with the Mermaid script, which it loads from a
CDN unless a global ``mermaid`` exists already; behind a firewall (or on a machine without the
internet) the diagrams then stay text. This hook takes the npm package ``mermaid`` at a pinned
version with npm itself (``npm pack``: a registry mirror or proxy set in npm's own config applies),
checks ``dist/mermaid.min.js`` against a pinned SHA-256, keeps it in ``.cache/mermaid/`` (not in
git: 3.5 MB of generated code), adds it to the site, and makes each page that has a diagram load
it before the theme's bundle. The build fails, saying what to do, when the script cannot be had.

For a build machine without npm or without the registry: ``npm pack mermaid@VERSION`` elsewhere and
put the tarball in ``.cache/mermaid/``; the hook takes it from there.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

# The major version is the one mkdocs-material 9 loads from its CDN (mermaid@11): the theme's
# Mermaid set-up is written for it.
VERSION = "11.17.2"
SHA256 = "581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8"
SCRIPT = f"assets/vendor/mermaid/{VERSION}/mermaid.min.js"
LICENSE = f"assets/vendor/mermaid/{VERSION}/LICENSE.txt"
_MEMBERS = {"package/dist/mermaid.min.js": "mermaid.min.js", "package/LICENSE": "LICENSE.txt"}
# What superfences writes for a ```mermaid block (mkdocs.yml's custom fence), and the theme's
# script that draws it: ours must come first, so that the theme finds `mermaid` and skips its CDN.
DIAGRAM = '<pre class="mermaid">'
BUNDLE = re.compile(r'<script src="[^"]*assets/javascripts/bundle\.[0-9a-f]+\.min\.js"></script>')
_NPM_SECONDS = 300


def _cache(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent / ".cache" / "mermaid"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _npm_pack(cache: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError(
            f"the docs ship Mermaid {VERSION} (npm package 'mermaid') with the site, and npm is "
            f"not on PATH: install Node.js and npm, or run `npm pack mermaid@{VERSION}` on a "
            f"machine that has them and put the tarball in {cache}"
        )
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            packed = subprocess.run(
                [npm, "pack", f"mermaid@{VERSION}", "--pack-destination", tmp, "--ignore-scripts"],
                capture_output=True,
                text=True,
                timeout=_NPM_SECONDS,
                env={**os.environ, "npm_config_update_notifier": "false"},
            )
        except subprocess.TimeoutExpired:
            raise PluginError(
                f"`npm pack mermaid@{VERSION}` did not finish in {_NPM_SECONDS} s: is the npm "
                f"registry reachable (npm config get registry)?"
            ) from None
        tarball = Path(tmp) / f"mermaid-{VERSION}.tgz"
        if packed.returncode != 0 or not tarball.is_file():
            lines = (packed.stderr or packed.stdout).strip().splitlines()
            # npm's own summary ("npm error code ECONNREFUSED", "... request to ... failed")
            # says what went wrong; the rest is advice and the path of its log.
            said = [line for line in lines if re.match(r"npm (error|ERR!) (code|request)", line)]
            said = said or lines[-3:]
            raise PluginError(
                f"`npm pack mermaid@{VERSION}` failed (exit {packed.returncode}), so the docs "
                f"cannot ship Mermaid with the site: {' | '.join(said) or 'no output'}. Is the "
                f"npm registry reachable? Offline: put mermaid-{VERSION}.tgz in {cache}"
            )
        kept = cache / tarball.name
        tarball.replace(kept)
    return kept


def _unpack(tarball: Path, into: Path) -> None:
    with tarfile.open(tarball) as archive:
        for member, name in _MEMBERS.items():
            try:
                source = archive.extractfile(member)
            except KeyError:
                source = None
            if source is None:
                raise PluginError(f"{tarball} has no {member}: not the npm package mermaid?")
            partial = into / f".{name}.partial"
            partial.write_bytes(source.read())
            partial.replace(into / name)


def mermaid_script(config: MkDocsConfig) -> Path:
    """``mermaid.min.js`` at the pinned version, from the cache or fetched into it."""
    cache = _cache(config)
    folder = cache / VERSION
    script = folder / "mermaid.min.js"
    if not (script.is_file() and (folder / "LICENSE.txt").is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        folder.mkdir(exist_ok=True)
        placed = cache / f"mermaid-{VERSION}.tgz"
        tarball = placed if placed.is_file() else _npm_pack(cache)
        _unpack(tarball, folder)
        if tarball is not placed:
            tarball.unlink()  # 18 MB, of which the site needs one file
    if _digest(script) != SHA256:
        raise PluginError(
            f"{script} is not Mermaid {VERSION} as pinned (SHA-256 {_digest(script)}, expected "
            f"{SHA256}); delete {folder} and build again"
        )
    return script


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add the pinned Mermaid script and its licence to the site."""
    script = mermaid_script(config)
    files.append(File.generated(config, SCRIPT, abs_src_path=str(script)))
    files.append(File.generated(config, LICENSE, abs_src_path=str(script.with_name("LICENSE.txt"))))
    return files


def on_post_page(output: str, page: Page, config: MkDocsConfig, **_: Any) -> str:
    """Load Mermaid, from the site, on the pages that have a diagram (3.5 MB: not on the rest)."""
    if DIAGRAM not in output:
        return output
    bundle = BUNDLE.search(output)
    if bundle is None:
        raise PluginError(
            f"{page.file.src_uri}: has a Mermaid diagram, but no mkdocs-material bundle script "
            f"to load Mermaid before (has the theme changed?)"
        )
    tag = f'<script src="{get_relative_url(SCRIPT, page.url)}"></script>\n'
    return output[: bundle.start()] + tag + output[bundle.start() :]
