"""Who is calling. `OwnerDep` is the id of the API token that authenticated the request, or None when the server
runs without tokens; routes store it as the owner of what they create and use it to filter what they read.

(Placeholder: tokens are not checked yet; every request is anonymous.)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends


def current_owner() -> str | None:
    return None


OwnerDep = Annotated[str | None, Depends(current_owner)]
