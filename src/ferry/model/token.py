"""A token: the identity of a caller, as ferryd captured it (SPEC §4.1). Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NO_SESSION = 4294967295  # /proc/PID/sessionid of a process outside any audit session


def sid_for_uid(uid: int) -> str:
    """The Samba-style Unix-user SID: what GetOwner and GetHelperTokenSid return."""
    return f"S-1-22-1-{uid}"


@dataclass(frozen=True, slots=True)
class Token:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    session: int | None = None
    name: str | None = None
    admin: bool = False
    pid: int | None = field(default=None, compare=False)

    @property
    def sid(self) -> str:
        return sid_for_uid(self.uid)

    @property
    def is_service(self) -> bool:
        """A token with no logon session is a service identity: always logged on."""
        return self.session is None

    def summary(self) -> dict[str, Any]:
        """What clients see of an identity."""
        return {"sid": self.sid, "uid": self.uid, "name": self.name}

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "session": self.session,
            "name": self.name,
            "admin": self.admin,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Token:
        return cls(
            uid=int(d["uid"]),
            gid=int(d["gid"]),
            groups=tuple(int(g) for g in d.get("groups", ())),
            session=None if d.get("session") is None else int(d["session"]),
            name=d.get("name"),
            admin=bool(d.get("admin", False)),
        )


class TokenInterner:
    """Decodes stored tokens (``Token.from_json``), handing out one shared Token for equal ones.

    For loading a store: 100,000 jobs of a handful of owners then hold a handful of Token
    objects instead of 100,000, which saves both the construction time and the memory.
    Sharing is safe because a Token is immutable: frozen, with slots (no ``__dict__``), and
    its fields are ints, a tuple of ints, a str and a bool. Only equal tokens are shared:
    records with equal fields give one object, and ``from_json`` never sets ``pid`` (which
    equality ignores), so no token ever stands in for one that differs from it.
    """

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        self._tokens: dict[tuple[Any, ...], Token] = {}

    def from_json(self, d: dict[str, Any]) -> Token:
        try:
            # The raw values: equal keys give equal tokens, since from_json only converts.
            key = (
                d["uid"],
                d["gid"],
                tuple(d.get("groups", ())),
                d.get("session"),
                d.get("name"),
                d.get("admin", False),
            )
            token = self._tokens.get(key)
        except Exception:
            # Not a well-formed token: the plain decoder raises (or decodes) as it always did.
            return Token.from_json(d)
        if token is None:
            token = self._tokens[key] = Token.from_json(d)
        return token

    def __len__(self) -> int:
        return len(self._tokens)


def is_admin(uid: int, groups: tuple[int, ...], admin_groups: frozenset[int]) -> bool:
    """ "Has an enabled administrators SID": root, or a member of a configured admin group."""
    return uid == 0 or any(g in admin_groups for g in groups)
