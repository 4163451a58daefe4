"""Dependencies of the routes: the settings and database of the app (set once by create_app), a session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_session(factory: Annotated[sessionmaker[Session], Depends(get_factory)]) -> Iterator[Session]:
    """A session per request; routes that write commit it themselves (before the response goes out)."""
    with factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]
SessionDep = Annotated[Session, Depends(get_session)]
