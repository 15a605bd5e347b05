"""Signed, expiring CDN links, so clients must treat ``video_url`` as a temporary bearer link."""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: bytes, video_id: str, expires: int) -> str:
    """HMAC-SHA256 (hex) over the video id and expiry, like a CDN's signed-URL token."""
    return hmac.new(secret, f"{video_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def verify(secret: bytes, video_id: str, expires: int, signature: str) -> bool:
    """Constant-time check of a signature produced by :func:`sign`."""
    return hmac.compare_digest(sign(secret, video_id, expires), signature)
