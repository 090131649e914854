"""Names every part of crashcart agrees on, in one place."""

from __future__ import annotations

import os

DEFAULT_IMAGE = "/var/lib/crashcart/crashcart.img"
# What the session supervisor shows as its command line (and `status` looks for).
SUPERVISOR_TITLE = "crashcart: session supervisor for "


def default_image() -> str:
    return os.environ.get("CRASHCART_IMAGE") or DEFAULT_IMAGE
