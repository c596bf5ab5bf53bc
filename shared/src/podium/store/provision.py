"""Creating and dropping PostgreSQL databases (``podium migrate --create-db``, the tests)."""

from __future__ import annotations

from sqlalchemy import create_engine, make_url, text


def _admin_url(url: str) -> tuple[str, str]:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError("database provisioning is for PostgreSQL URLs only")
    name = parsed.database or ""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"refusing unusual database name {name!r}")
    admin = parsed.set(drivername="postgresql+psycopg", database="postgres")
    return admin.render_as_string(hide_password=False), name


def ensure_database(url: str) -> bool:
    """Create the URL's database if it does not exist. Returns True if it was created.
    Does nothing for SQLite, whose file is created on first use."""
    if url.startswith("sqlite"):
        return False
    admin_url, name = _admin_url(url)
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if exists:
                return False
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            return True
    finally:
        engine.dispose()


def drop_database(url: str) -> None:
    admin_url, name = _admin_url(url)
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
