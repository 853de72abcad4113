"""The Ray token of `mcsim submit/status/logs`: where it comes from and what a refusal means.

A cluster started with ``RAY_AUTH_MODE=token`` (cluster/aws.yaml, cluster/rayjob.yaml,
cluster/local.sh) answers its dashboard and Jobs API only to requests that carry its token
(``Authorization: Bearer <token>``). The token is looked up where Ray looks for it, in Ray's
order: ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token`` (what
``ray get-auth-token --generate`` writes). mcsim sends it whenever it finds one, whatever this
process's own ``RAY_AUTH_MODE`` (a cluster without authentication ignores it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from mcsim.errors import InputError

__all__ = ["AuthError", "auth_headers", "find_token", "refusal"]

#: How a user gives mcsim the token (the end of every refusal message).
HOW = ("give the cluster's token in $RAY_AUTH_TOKEN, in a file named by $RAY_AUTH_TOKEN_PATH, or in "
       "~/.ray/auth_token (`ray get-auth-token` on the head prints it; cluster/local.sh writes it to "
       "$MCSIM_RAY_DIR/auth_token)")


class AuthError(InputError, RuntimeError):
    """The cluster asks for a token this process does not have, or refused the one it sent."""


def find_token() -> tuple[Optional[str], str]:
    """``(token, where it came from)``; ``(None, "")`` when there is none. A ``$RAY_AUTH_TOKEN_PATH``
    that cannot be read is an :class:`AuthError` (as Ray itself treats it)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "$RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as err:
            raise AuthError(f"$RAY_AUTH_TOKEN_PATH={path}: cannot read the Ray token ({err.strerror or err})") from None
        if not token:
            raise AuthError(f"$RAY_AUTH_TOKEN_PATH={path}: the file is empty")
        return token, f"$RAY_AUTH_TOKEN_PATH ({path})"
    default = Path.home() / ".ray" / "auth_token"
    try:
        token = default.read_text().strip()
    except OSError:
        return None, ""
    return (token, str(default)) if token else (None, "")


def auth_headers() -> dict[str, str]:
    """The HTTP header that carries the token, or none when there is no token."""
    token, _ = find_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def refusal(err: BaseException, address: str) -> Optional[AuthError]:
    """The :class:`AuthError` for a Ray client error that is an authentication refusal (HTTP 401:
    no token sent; 403: a wrong one), else None."""
    status = getattr(err, "status", None)  # aiohttp's handshake error (logs --follow)
    text = str(err)
    missing = status == 401 or "Authentication required" in text
    wrong = status == 403 or "Authentication failed" in text or "invalid authentication token" in text.lower()
    if not (missing or wrong):
        return None
    token, source = find_token()
    if missing or token is None:
        return AuthError(f"the cluster at {address} requires Ray token authentication and mcsim found no "
                         f"token; {HOW}")
    return AuthError(f"the cluster at {address} refused the Ray token from {source} (not this cluster's "
                     f"token); {HOW}")
