"""The embedded store's part for the learned models (`Models` in base.py): embedding rows (users' in
their region's file, the rest in the shared one), the item side's deltas, and dense blobs. Writer: the
trainer (and a server's erasure and refresh, through the guard)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from foryou.store.sqlite_schema import chunks, marks, tx


class ModelTables:
    """`Models` over the shared connection and the regions' model files (`SQLiteStore` holds them)."""

    _models: sqlite3.Connection  # the shared model file
    _region: dict[str, sqlite3.Connection]  # the regions' logs and profiles
    _region_models: dict[str, sqlite3.Connection]

    def drop_model(self) -> None:
        for conn in (*self._region_models.values(), self._models):  # the shared blob last: it holds the marks
            with tx(conn) as c:
                c.execute("DELETE FROM model_rows")
                if conn is self._models:
                    c.execute("DELETE FROM model_deltas")
                    c.execute("DELETE FROM model_blobs")

    def _model_conn(self, region: str | None) -> sqlite3.Connection:
        return self._models if region is None else self._region_models[region]

    def save_model_rows(self, region: str | None, table: str, rows: Sequence[tuple[str, bytes]],
                        removed: Sequence[str], version: int = 0, guard: str | None = None) -> list[str]:
        with tx(self._model_conn(region)) as c:
            put, left_out = list(rows), []
            if guard is not None and region is not None and put:
                keys = [k for k, _ in put]
                users: set[str] = set()
                guarded: set[str] = set()
                profiles = self._region[region]  # read in this transaction: see `erase_user`
                for chunk in chunks(keys):
                    users.update(k for (k,) in profiles.execute(f"SELECT id FROM users WHERE id IN ({marks(chunk)})",
                                                                chunk))
                    q = f"SELECT key FROM model_rows WHERE tbl=? AND key IN ({marks(chunk)})"
                    guarded.update(k for (k,) in c.execute(q, (guard, *chunk)))
                left_out = [k for k in keys if k not in users or k in guarded]
                if left_out:
                    out = set(left_out)
                    put = [(k, v) for k, v in put if k not in out]
            c.executemany("INSERT OR REPLACE INTO model_rows VALUES (?,?,?,?)",
                          [(table, k, v, version) for k, v in put])
            c.executemany("DELETE FROM model_rows WHERE tbl=? AND key=?", [(table, k) for k in removed])
        return left_out

    def iter_model_rows(self, region: str | None, table: str) -> Iterator[tuple[str, bytes]]:
        for key, row in self._model_conn(region).execute("SELECT key, row FROM model_rows WHERE tbl=?", (table,)):
            yield key, bytes(row)

    def get_model_rows(self, region: str | None, table: str, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        conn = self._model_conn(region)
        for chunk in chunks(keys):
            q = f"SELECT key, row FROM model_rows WHERE tbl=? AND key IN ({marks(chunk)})"
            out.update((key, bytes(row)) for key, row in conn.execute(q, (table, *chunk)))
        return out

    def model_rows_after(self, region: str | None, table: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        q = "SELECT key, row FROM model_rows WHERE tbl=? AND key>? ORDER BY key LIMIT ?"
        return [(key, bytes(row)) for key, row in self._model_conn(region).execute(q, (table, after, limit))]

    def delete_model_rows_if(self, region: str | None, table: str, rows: Sequence[tuple[str, bytes]]) -> int:
        with tx(self._model_conn(region)) as c:
            return sum(c.execute("DELETE FROM model_rows WHERE tbl=? AND key=? AND row=?", (table, k, v)).rowcount
                       for k, v in rows)

    def model_rows_since(self, region: str | None, table: str, after: int, through: int) -> list[tuple[str, bytes]]:
        q = "SELECT key, row FROM model_rows WHERE tbl=? AND ver>? AND ver<=?"
        return [(key, bytes(row)) for key, row in self._model_conn(region).execute(q, (table, after, through))]

    def clear_model_rows(self, region: str | None, table: str) -> None:
        with tx(self._model_conn(region)) as c:
            c.execute("DELETE FROM model_rows WHERE tbl=?", (table,))

    def append_model_delta(self, version: int, blob: bytes) -> None:
        with tx(self._models) as c:
            c.execute("INSERT OR REPLACE INTO model_deltas VALUES (?,?)", (version, blob))

    def model_deltas(self, after: int) -> list[tuple[int, bytes]]:
        q = "SELECT version, blob FROM model_deltas WHERE version>? ORDER BY version"
        return [(v, bytes(b)) for v, b in self._models.execute(q, (after,))]

    def keep_model_deltas(self, after: int, through: int) -> None:
        with tx(self._models) as c:
            c.execute("DELETE FROM model_deltas WHERE version<=? OR version>?", (after, through))

    def save_model_blob(self, key: str, value: bytes) -> None:
        with tx(self._models) as c:
            c.execute("INSERT OR REPLACE INTO model_blobs VALUES (?,?)", (key, value))

    def delete_model_blobs(self, keys: Sequence[str]) -> None:
        with tx(self._models) as c:
            c.executemany("DELETE FROM model_blobs WHERE key=?", [(k,) for k in keys])

    def get_model_blob(self, key: str) -> bytes | None:
        row = self._models.execute("SELECT value FROM model_blobs WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])
