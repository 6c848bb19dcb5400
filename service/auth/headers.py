"""Security headers for the server-rendered pages."""

from __future__ import annotations

# Everything (scripts, styles, images, fetch) comes from this origin; no inline script can run,
# so even a missed escape cannot execute injected markup.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def add_page_headers(response):
    """Add CSP and friends to an HTML page response (after_request hook)."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        # Pages show live data and personal state; never serve them from a shared cache.
        response.headers.setdefault("Cache-Control", "no-store")
    return response
