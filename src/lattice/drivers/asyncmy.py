"""asyncmy (``mysql+asyncmy``): MySQL and MariaDB on the general SQLAlchemy path.

Reads do not switch to AUTOCOMMIT: on MySQL that costs a round trip each
way (``SET autocommit``), more than the ROLLBACK the pool sends.
"""

from __future__ import annotations

from .sqlalchemy import SQLAlchemyDriver

__all__ = ["ASYNCMY"]

ASYNCMY = SQLAlchemyDriver("asyncmy", autocommit_reads=False)
