"""Who may act on a run when the lab serves a team with a login (docs/security.md, "Serving a team").

Responsible for: the logged-in `User` (name = the email / subject the login passed, admin flag from the operator's
`[auth] admins` list), the rule "cancel, delete and resume are the run's owner's or an admin's", and reading the
user from an authenticating proxy's headers (trusted only with the operator's shared secret).

Not responsible for: the login itself (the proxy does it) or anything Streamlit does. `user=None` everywhere means
no login (a single user on loopback): every action is allowed, as before owners existed.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

ACTIONS = ("cancel", "delete", "resume")
MAX_USER_CHARS = 320  # the longest email address; the store's owner_user column


class NotOwnerError(PermissionError):
    """A logged-in user tried to cancel / delete / resume a run that is neither theirs nor theirs to administer."""


class LoginError(PermissionError):
    """A request did not come through the operator's authenticating proxy (missing / wrong secret, no user)."""


@dataclass(frozen=True)
class User:
    """A logged-in user: `name` is what the login passed (email or subject); `admin` from the operator's list."""

    name: str
    admin: bool = False


def may_act(owner_user: str | None, user: User | None) -> bool:
    """Whether `user` may cancel / delete / resume a run owned by `owner_user` (None: started without login)."""
    if user is None:  # no login: the single user on loopback owns everything
        return True
    if user.admin:
        return True
    return owner_user is not None and hmac.compare_digest(owner_user.encode(), user.name.encode())


def check_may_act(run_id: str, owner_user: str | None, user: User | None, action: str) -> None:
    """NotOwnerError, naming the run, its owner and who may, unless `may_act`."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    if may_act(owner_user, user):
        return
    whose = f"belongs to {owner_user}" if owner_user else "was started before owners existed (or without login)"
    only = "its owner or an admin" if owner_user else "an admin"
    raise NotOwnerError(f"run {run_id} {whose}: only {only} may {action} it (you are {user.name})")


def user_from_proxy(headers: Mapping[str, str], user_header: str, secret_header: str, secret: str,
                    admins: tuple[str, ...] = ()) -> User:
    """The user an authenticating proxy names in `user_header`, trusted only when `secret_header` carries the
    operator's shared `secret` (so nobody who reaches the lab's port around the proxy can claim a name).

    Header names are matched case-insensitively. LoginError when the secret is missing / wrong or no user is named.
    """
    if not secret:
        raise LoginError("no proxy secret is configured: the lab trusts no user header")
    lower = {k.lower(): v for k, v in headers.items()}
    given = lower.get(secret_header.lower(), "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise LoginError("this request did not come through the lab's login proxy")
    name = lower.get(user_header.lower(), "").strip()
    if not name or len(name) > MAX_USER_CHARS or not name.isprintable():
        raise LoginError("the login proxy named no (valid) user")
    return User(name=name, admin=name in admins)
