"""API tokens: create, list, revoke, and look one up for a request.

A token is `secrets.token_urlsafe(32)` (256 random bits), shown once when created; only its SHA-256 is stored.
A fast unsalted hash is enough for a secret that random: nothing can be guessed from it, and it makes the
lookup a single indexed equality (the time such a lookup takes says something about a hash, never about a
token). Like service.repository, these functions flush and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from datetime import timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from .models import ApiToken, utcnow
from .repository import InvalidArgument, RepositoryError

TOKEN_BYTES = 32
# last_used_at is written at most this often per token, so an authenticated request is not also a write.
TOUCH_EVERY = timedelta(seconds=60)
MAX_NAME = 200


class TokenNotFound(RepositoryError, LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no token named {name!r}; known: {', '.join(known) or 'none'}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidArgument(f"a token name needs 1 to {MAX_NAME} printable characters, got {name!r}")
    return name


def create_token(session: Session, name: str) -> tuple[ApiToken, str]:
    """A new token named `name`: (its row, the clear token). The clear token is not stored anywhere."""
    name = _check_name(name)
    existing = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if existing is not None:
        state = "revoked" if existing.revoked_at is not None else "active"
        raise InvalidArgument(f"a token named {name!r} already exists ({state}); names are never reused, "
                              "pick another")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = ApiToken(name=name, token_hash=hash_token(token), created_at=utcnow())
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.name)).all())


def revoke_token(session: Session, name: str) -> ApiToken:
    """Revoke the token named `name` (from its next request on); revoking it again changes nothing."""
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise TokenNotFound(name, [t.name for t in list_tokens(session)])
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def active_tokens_exist(session: Session) -> bool:
    """Whether any unrevoked token exists."""
    return bool(session.scalar(select(exists().where(ApiToken.revoked_at.is_(None)))))


def token_state(session: Session) -> tuple[bool, bool]:
    """(any token was ever created, revoked ones included; an unrevoked one exists), in one query. The first is
    what turns NASPRUNE_AUTH=auto on for good (revoking a leaked last token must not open the server to anyone)."""
    created, active = session.execute(select(exists().where(ApiToken.id.is_not(None)),
                                             exists().where(ApiToken.revoked_at.is_(None)))).one()
    return bool(created), bool(active)


def authenticate(session: Session, token: str) -> ApiToken | None:
    """The active token whose hash is that of `token`, or None (unknown or revoked). Stamps last_used_at when
    the stored stamp is older than TOUCH_EVERY (a conditional UPDATE: concurrent requests write it once)."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
        stale = (ApiToken.last_used_at.is_(None)) | (ApiToken.last_used_at <= now - TOUCH_EVERY)
        session.execute(update(ApiToken).where(ApiToken.id == row.id, stale).values(last_used_at=now)
                        .execution_options(synchronize_session=False))
    return row
