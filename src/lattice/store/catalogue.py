"""The catalogue: one session's row, and its metadata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..items import check_session_id
from .core import StoreCore
from .model import SessionInfo, decode_metadata, encode_metadata, merge_patch

__all__ = ["get_info", "set_metadata"]


async def get_info(core: StoreCore, session_id: str) -> SessionInfo | None:
    """See :meth:`lattice.SessionStore.get_info`."""
    check_session_id(session_id)
    s = core.tables.sessions
    rows = await core.read(core.info_columns().where(s.c.session_id == session_id), replica=True)
    return SessionInfo.from_row(rows[0]) if rows else None


async def set_metadata(
    core: StoreCore, session_id: str, metadata: Mapping[str, Any], *, replace: bool
) -> SessionInfo:
    """See :meth:`lattice.SessionStore.set_metadata`."""
    check_session_id(session_id)
    if replace:
        encode_metadata(metadata)
    else:
        encode_metadata({k: v for k, v in dict(metadata).items() if k != "owner"})
    s = core.tables.sessions
    this = s.c.session_id == session_id

    async def body(conn: AsyncConnection) -> SessionInfo:
        await core.lock_or_create(conn, session_id)
        current = (await conn.execute(select(s.c.session_metadata).where(this))).scalar()
        new = dict(metadata) if replace else merge_patch(decode_metadata(current), metadata)
        text, owner = encode_metadata(new)
        await conn.execute(update(s).where(this).values(session_metadata=text, owner=owner))
        row = (await conn.execute(core.info_columns().where(this))).one()
        return SessionInfo.from_row(row)

    return await core.transact(body)
