"""The store conformance suite runs against every ``JobStore`` implementation.

A store joins by adding one factory to ``FACTORIES``: given a fresh temporary directory it
returns an object whose ``open()`` opens the store kept there — empty the first time, the
same data on every later call (that is how tests close and reopen) — and whose
``destroy()`` releases whatever the store holds outside that directory (a PostgreSQL
schema, say). Every test in this package then runs once per factory.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from ferry.store.base import JobStore
from ferry.store.sqlite import SqliteJobStore


class StoreFactory(Protocol):
    async def open(self) -> JobStore: ...

    async def destroy(self) -> None: ...


class SqliteFactory:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "state" / "ferry.db"

    async def open(self) -> JobStore:
        return SqliteJobStore.open(self.path)

    async def destroy(self) -> None:
        pass  # the temporary directory goes with the test


class PostgresFactory:
    """A fresh database per test on the session's throwaway cluster (harness/postgres.py)."""

    _names = itertools.count()

    def __init__(self, tmp: Path) -> None:
        from harness.postgres import PgCluster

        cluster = _PG.get("cluster")
        if cluster is None:
            why = _PG.get("skip")
            if why is None:
                from harness.postgres import available

                why = available()
            if why is None:
                try:
                    cluster = _PG["cluster"] = PgCluster.start()
                except Exception as exc:  # no usable PostgreSQL here: say why
                    why = f"cannot start a PostgreSQL cluster: {exc}"
            if why is not None:
                _PG["skip"] = why
                pytest.skip(why)
        assert isinstance(cluster, PgCluster)
        self.cluster = cluster
        self.name = f"store_{os.getpid()}_{next(self._names)}"
        self.url = cluster.create_database(self.name)

    async def open(self) -> JobStore:
        from ferry.store.postgres import PostgresJobStore

        return PostgresJobStore.open(self.url)

    async def destroy(self) -> None:
        self.cluster.drop_database(self.name)


_PG: dict[str, object] = {}


@pytest.fixture(scope="session", autouse=True)
def _postgres_cluster() -> Iterator[None]:
    """The session's cluster, started by the first PostgreSQL test and destroyed at the end."""
    yield
    cluster = _PG.pop("cluster", None)
    if cluster is not None:
        cluster.destroy()  # type: ignore[attr-defined]


FACTORIES: dict[str, Callable[[Path], StoreFactory]] = {
    "sqlite": SqliteFactory,
    "postgres": PostgresFactory,
}


class Stores:
    """Opens the store under test, reopens it, and closes whatever is still open at the end."""

    def __init__(self, factory: StoreFactory) -> None:
        self.factory = factory
        self.opened: list[JobStore] = []

    async def open(self) -> JobStore:
        store = await self.factory.open()
        self.opened.append(store)
        return store

    async def reopen(self, store: JobStore) -> JobStore:
        """Close ``store`` (committing what it was given) and open the same storage again."""
        await store.close()
        return await self.open()

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()


@pytest.fixture(params=sorted(FACTORIES))
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    factory = FACTORIES[request.param](tmp_path)
    s = Stores(factory)
    try:
        yield s
    finally:
        try:
            await s.close_all()
        finally:
            await factory.destroy()


@pytest.fixture
async def store(stores: Stores) -> JobStore:
    return await stores.open()
