"""The three implementations measured side by side, behind one small interface."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import MetaData, String, Text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex, CreateTable

from lattice import SQLAlchemySession
from lattice.engines import make_engine
from lattice.schema import lattice_tables

from .raw import POOL_SIZE, RawDriver, raw_driver

__all__ = ["IMPLS", "POP_ONLY_IMPLS", "Impl", "SessionLike", "make_impl"]

#: ``caller``: Lattice on an engine the application made itself, as the
#: Agents SDK's examples do (``create_async_engine(url, pool_size=15,
#: max_overflow=0)``: the raw driver's pool size). ``rawtx``: the raw driver
#: with every pop in BEGIN ... COMMIT (PostgreSQL's pop with the guarantee
#: Lattice's has; measured for pops only).
IMPLS = ("lattice", "caller", "sdk", "raw")
POP_ONLY_IMPLS = ("rawtx",)


class SessionLike(Protocol):
    session_id: str

    async def add_items(self, items: list[dict[str, Any]]) -> None: ...
    async def get_items(self, limit: int | None = None) -> list[dict[str, Any]]: ...
    async def pop_item(self) -> dict[str, Any] | None: ...


def _ddl(meta: MetaData, engine: AsyncEngine) -> str:
    """The CREATE statements of ``meta``: the fingerprint a cached data set must match."""
    parts = []
    for table in meta.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=engine.dialect)))
        # By name: ``table.indexes`` is a set, whose order changes from process to process.
        indexes = sorted(table.indexes, key=lambda ix: str(ix.name))
        parts += [str(CreateIndex(ix).compile(dialect=engine.dialect)) for ix in indexes]
    return "\n".join(parts)


class Impl:
    """One implementation on one backend.

    ``engine`` is the SQLAlchemy engine the implementation runs on (the raw
    driver gets Lattice's, for creating tables and building data sets only).
    """

    name = ""
    #: Raw shares Lattice's schema and data sets; the SDK has its own.
    schema = "lr"

    def __init__(self, url: URL) -> None:
        self.url = url
        self.engine: AsyncEngine = make_engine(url)

    async def open(self) -> None:
        """Connect (anything beyond the engine)."""

    async def close(self) -> None:
        await self.engine.dispose()

    def session(self, session_id: str, prefix: str) -> SessionLike:
        raise NotImplementedError

    def metadata(self, prefix: str) -> MetaData:
        return lattice_tables(f"{prefix}_sessions", f"{prefix}_messages").metadata

    def ddl(self, prefix: str) -> str:
        return _ddl(self.metadata(prefix), self.engine)

    async def create_tables(self, prefix: str, *, drop: bool = False) -> None:
        meta = self.metadata(prefix)
        async with self.engine.begin() as conn:
            if drop:
                await conn.run_sync(meta.drop_all)
            await conn.run_sync(meta.create_all)

    def concurrent(self, on: bool) -> None:
        """Switch to pooled connections for the concurrent operation ``f``."""


class LatticeImpl(Impl):
    name = "lattice"

    def session(self, session_id: str, prefix: str) -> SessionLike:
        return SQLAlchemySession(
            session_id,
            engine=self.engine,
            sessions_table=f"{prefix}_sessions",
            messages_table=f"{prefix}_messages",
        )


class CallerImpl(LatticeImpl):
    """Lattice on an engine the application makes: ``create_async_engine``, 15 connections."""

    name = "caller"

    def __init__(self, url: URL) -> None:
        self.url = url
        self.engine = create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0)


class SdkImpl(Impl):
    """The OpenAI Agents SDK's ``SQLAlchemySession`` on its own engine and tables."""

    name = "sdk"
    schema = "sdk"

    def __init__(self, url: URL) -> None:
        self.url = url
        # What the SDK's own from_url does: a plain create_async_engine.
        self.engine = create_async_engine(url)

    def session(self, session_id: str, prefix: str) -> SessionLike:
        from agents.extensions.memory import SQLAlchemySession as SdkSession

        session: SessionLike = SdkSession(
            session_id,
            engine=self.engine,
            sessions_table=f"{prefix}_sessions",
            messages_table=f"{prefix}_messages",
        )
        return session

    def metadata(self, prefix: str) -> MetaData:
        meta: MetaData = self.session("ddl", prefix)._metadata  # type: ignore[attr-defined]
        if self.engine.dialect.name in ("mysql", "mariadb"):
            # The SDK declares VARCHAR without a length, which MySQL refuses, so
            # it cannot create its tables there; we make them for it, with 255.
            for table in meta.tables.values():
                for column in table.columns:
                    if isinstance(column.type, String) and not isinstance(column.type, Text):
                        if column.type.length is None:
                            column.type.length = 255
        return meta


class RawImpl(Impl):
    name = "raw"
    pops_in_transaction = False

    def __init__(self, url: URL) -> None:
        super().__init__(url)
        self.driver: RawDriver = raw_driver(url)
        self.driver.pops_in_transaction = self.pops_in_transaction

    async def open(self) -> None:
        await self.driver.open()

    async def close(self) -> None:
        await self.driver.close()
        await super().close()

    def session(self, session_id: str, prefix: str) -> SessionLike:
        return self.driver.session(session_id, prefix)

    def concurrent(self, on: bool) -> None:
        self.driver.pooled = on


class RawTxImpl(RawImpl):
    """The raw driver, each pop in its own explicit transaction."""

    name = "rawtx"
    pops_in_transaction = True


def make_impl(name: str, url: URL) -> Impl:
    """The implementation called ``name`` on the database at ``url``."""
    kinds: dict[str, type[Impl]] = {
        "lattice": LatticeImpl,
        "caller": CallerImpl,
        "sdk": SdkImpl,
        "raw": RawImpl,
        "rawtx": RawTxImpl,
    }
    return kinds[name](url)
