"""Bearer tokens -> who is calling: a project and a role (admin or member)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cellplane.errors import PermissionDenied, Unauthenticated

DEFAULT_PROJECT = "default"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller."""

    project_id: str
    role: str
    user_id: str

    @property
    def is_admin(self) -> bool:
        """Admins see every project and may use cell hints and the cells API."""
        return self.role == "admin"

    def require_admin(self, what: str) -> None:
        """Raise PermissionDenied unless the caller is an admin."""
        if not self.is_admin:
            raise PermissionDenied(f"{what} is for admins only")


class Authenticator:
    """Maps the ``authorization: Bearer <token>`` metadata to a :class:`Caller`.

    With no tokens configured every caller is an admin of project ``default``
    (a single-user setup); the cell logs a warning at start in that case.
    """

    def __init__(self, tokens: Iterable[tuple[str, tuple[str, str]]]) -> None:
        self._tokens = {token: who for token, who in tokens}

    @property
    def open(self) -> bool:
        """True when no tokens are configured."""
        return not self._tokens

    def caller(self, context: Any) -> Caller:
        """Who is calling, from the request metadata."""
        if not self._tokens:
            return Caller(DEFAULT_PROJECT, "admin", "anonymous")
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        who = self._tokens.get(token.strip())
        if who is None:
            raise Unauthenticated("unknown token")
        project, role = who
        return Caller(project, role, f"{project}-{role}")
