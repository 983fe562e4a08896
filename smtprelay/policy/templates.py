"""SES email templates (CreateEmailTemplate and the rest): each account's own, by name.

A template belongs to the account whose API key created it; another account neither
sees nor uses it (it does not exist for them, as with configuration sets). SES's
limit: 10,000 templates per account.

Kept where the other shared lists are (`store.backend`): the state database
(`SQLiteTemplateStore`) or Redis (policy.templates_redis), so that every node of a
cluster sends with the same templates; policy.stores picks. Blocking calls: the
daemon runs them in a thread.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from smtprelay.db import sqlite

MAX_TEMPLATES = 10_000  # SES: "up to 10,000 email templates per Amazon SES account"

_MIGRATIONS: tuple[str, ...] = ("""
CREATE TABLE email_templates (
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    subject TEXT,
    text TEXT,
    html TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (account, name)
) WITHOUT ROWID
""",)


class TemplateExists(Exception):
    """CreateEmailTemplate of a name the account has already."""


class TooManyTemplates(Exception):
    """The account has MAX_TEMPLATES already."""


@dataclass(frozen=True, slots=True)
class Content:
    """A template's parts (SES's EmailTemplateContent); None for a part it lacks."""

    subject: str | None
    text: str | None
    html: str | None

    def parts(self) -> list[tuple[str, str]]:
        return [(name, value) for name, value in
                (("Subject", self.subject), ("Text", self.text), ("Html", self.html))
                if value is not None]

    def size(self) -> int:
        return sum(len(v.encode()) for _, v in self.parts())

    def as_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "text": self.text, "html": self.html}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Content:
        return cls(value.get("subject"), value.get("text"), value.get("html"))


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    content: Content
    created_at: float


class TemplateStore(Protocol):
    def create(self, account: str, name: str, content: Content, *,
               at: float | None = None) -> Template:
        """The new template; TemplateExists, TooManyTemplates."""

    def get(self, account: str, name: str) -> Template | None: ...

    def update(self, account: str, name: str, content: Content) -> bool:
        """False: the account has no such template."""

    def delete(self, account: str, name: str) -> bool: ...

    def page(self, account: str, *, after: str | None, limit: int) -> list[Template]:
        """The account's templates in name order, those after `after`, at most `limit`."""

    def open(self) -> None: ...

    def close(self) -> None: ...


_COLUMNS = "name, subject, text, html, created_at"


def _template(row: tuple[Any, ...]) -> Template:
    return Template(row[0], Content(row[1], row[2], row[3]), row[4])


class SQLiteTemplateStore(sqlite.Store):
    COMPONENT = "templates"
    MIGRATIONS = _MIGRATIONS

    def create(self, account: str, name: str, content: Content, *,
               at: float | None = None) -> Template:
        when = time.time() if at is None else at
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM email_templates WHERE account = ? AND name = ?",
                            (account, name)).fetchone():
                raise TemplateExists(name)
            (count,) = conn.execute("SELECT count(*) FROM email_templates WHERE account = ?",
                                    (account,)).fetchone()
            if count >= MAX_TEMPLATES:
                raise TooManyTemplates(account)
            conn.execute(
                "INSERT INTO email_templates (account, name, subject, text, html,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                (account, name, content.subject, content.text, content.html, when, when))
        return Template(name, content, when)

    def get(self, account: str, name: str) -> Template | None:
        with self._lock:
            row = self.conn.execute(
                f"SELECT {_COLUMNS} FROM email_templates"  # noqa: S608 - fixed columns
                " WHERE account = ? AND name = ?", (account, name)).fetchone()
        return None if row is None else _template(row)

    def update(self, account: str, name: str, content: Content) -> bool:
        with self._lock:
            changed = self.conn.execute(
                "UPDATE email_templates SET subject = ?, text = ?, html = ?, updated_at = ?"
                " WHERE account = ? AND name = ?",
                (content.subject, content.text, content.html, time.time(), account, name))
        return changed.rowcount > 0

    def delete(self, account: str, name: str) -> bool:
        with self._lock:
            gone = self.conn.execute(
                "DELETE FROM email_templates WHERE account = ? AND name = ?", (account, name))
        return gone.rowcount > 0

    def page(self, account: str, *, after: str | None, limit: int) -> list[Template]:
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM email_templates"  # noqa: S608 - fixed columns
                " WHERE account = ? AND name > ? ORDER BY name LIMIT ?",
                (account, after or "", limit)).fetchall()
        return [_template(row) for row in rows]


def encode(template: Template) -> bytes:
    """A template as the Redis store keeps it."""
    return json.dumps({**template.content.as_json(), "created_at": template.created_at},
                      separators=(",", ":")).encode()


def decode(name: str, value: bytes) -> Template:
    fields = json.loads(value)
    return Template(name, Content.from_json(fields), float(fields["created_at"]))
