"""The server image copies every installed package (a missing one would only show when the image runs)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_image_copies_every_installed_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "ops" / "Dockerfile").read_text(), re.M))
    assert packages <= copied, f"ops/Dockerfile does not copy {sorted(packages - copied)}"
