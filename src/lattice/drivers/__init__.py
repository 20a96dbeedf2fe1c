"""The drivers layer: one module per driver, behind the :class:`Driver` contract.

:func:`driver_for` picks an engine's driver by SQLAlchemy's driver name:

=============  ==========================================  =========
driver         module                                      path
=============  ==========================================  =========
asyncpg        :mod:`lattice.drivers.asyncpg`              fast
aiosqlite      :mod:`lattice.drivers.aiosqlite`            fast
aiomysql       :mod:`lattice.drivers.aiomysql`             fast
psycopg        :mod:`lattice.drivers.psycopg`              general
asyncmy        :mod:`lattice.drivers.asyncmy`              general
anything else  :mod:`lattice.drivers.sqlalchemy`           general
=============  ==========================================  =========

``docs/architecture.md`` says how to add one.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from ..engines import EngineState
from .aiomysql import AiomysqlDriver
from .aiosqlite import AiosqliteDriver
from .asyncmy import ASYNCMY
from .asyncpg import AsyncpgDriver
from .base import Driver, Plan, Runner, Step, StepKind, Stmt
from .operations import Operations, Popped
from .psycopg import PSYCOPG
from .sqlalchemy import SQLAlchemyDriver

__all__ = [
    "Driver",
    "Operations",
    "Plan",
    "Popped",
    "Runner",
    "SQLAlchemyDriver",
    "Step",
    "StepKind",
    "Stmt",
    "driver_for",
]

_DRIVERS: dict[str, Driver] = {
    driver.name: driver for driver in (AsyncpgDriver(), AiosqliteDriver(), AiomysqlDriver())
}
_GENERAL: dict[str, Driver] = {"psycopg": PSYCOPG, "asyncmy": ASYNCMY}


def driver_for(engine: AsyncEngine, state: EngineState) -> Driver:
    """The driver that runs sessions' statements on ``engine``.

    A fast driver where one exists for the engine's driver (unless
    ``state.fast_path`` is off), else the general SQLAlchemy path.
    """
    name = engine.dialect.driver
    if state.fast_path:
        fast = _DRIVERS.get(name)
        if fast is not None:
            return fast
    general = _GENERAL.get(name)
    if general is None:
        general = _GENERAL[name] = SQLAlchemyDriver(
            name, autocommit_reads=engine.dialect.name == "postgresql"
        )
    return general
