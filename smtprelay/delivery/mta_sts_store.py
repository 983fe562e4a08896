"""MTA-STS policies on disk, so that a restart does not open the window the cache closes.

A policy in the cache is what stops an attacker who strips the ``_mta-sts`` TXT record
or blocks the HTTPS fetch from downgrading delivery to an unverified (or clear-text)
MX (RFC 8461 10.2). Kept only in memory, every restart of the relay would hand that
attacker a fresh start; here each fetched policy is written to the state database with
the wall-clock time it expires, and read back the first time the domain is asked for.

Writes happen once per fetched policy (not per message), reads once per domain and
process; both run in a worker thread (`db.sqlite.Store` is thread-safe).
"""

from __future__ import annotations

from dataclasses import dataclass

from smtprelay.db.sqlite import Store


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    policy_id: str  # the TXT record's id it was fetched under
    text: str  # the policy file as fetched
    fetched_at: float  # wall clock (Unix seconds)
    expires_at: float  # fetched_at + max_age


class StsPolicyStore(Store):
    """The ``mta_sts`` tables of the state database."""

    COMPONENT = "mta_sts"
    MIGRATIONS = (
        "CREATE TABLE mta_sts_policies (domain TEXT PRIMARY KEY, policy_id TEXT NOT NULL,"
        " policy TEXT NOT NULL, fetched_at REAL NOT NULL, expires_at REAL NOT NULL)"
        " WITHOUT ROWID",
    )

    def get(self, domain: str, now: float) -> StoredPolicy | None:
        """The policy of `domain` still within its max_age at `now`."""
        with self._lock:
            row = self.conn.execute(
                "SELECT policy_id, policy, fetched_at, expires_at FROM mta_sts_policies"
                " WHERE domain = ? AND expires_at > ?", (domain, now)).fetchone()
        if row is None:
            return None
        return StoredPolicy(str(row[0]), str(row[1]), float(row[2]), float(row[3]))

    def put(self, domain: str, policy: StoredPolicy) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO mta_sts_policies VALUES (?, ?, ?, ?, ?) ON CONFLICT (domain)"
                " DO UPDATE SET policy_id = excluded.policy_id, policy = excluded.policy,"
                " fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
                (domain, policy.policy_id, policy.text, policy.fetched_at,
                 policy.expires_at))

    def listing(self, now: float) -> list[tuple[str, StoredPolicy]]:
        """Every domain's policy still within its max_age at `now`, by domain."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT domain, policy_id, policy, fetched_at, expires_at FROM"
                " mta_sts_policies WHERE expires_at > ? ORDER BY domain", (now,)).fetchall()
        return [(str(r[0]), StoredPolicy(str(r[1]), str(r[2]), float(r[3]), float(r[4])))
                for r in rows]

    def forget(self, domain: str) -> bool:
        """Drop `domain`'s policy; whether there was one."""
        with self.transaction() as conn:
            return bool(conn.execute("DELETE FROM mta_sts_policies WHERE domain = ?",
                                     (domain,)).rowcount)

    def purge(self, now: float) -> int:
        """Drop the policies past their max_age; how many went."""
        with self.transaction() as conn:
            return int(conn.execute("DELETE FROM mta_sts_policies WHERE expires_at <= ?",
                                    (now,)).rowcount)
