"""The SES email templates' store on both backends of store.backend: the state database,
and Redis (a real server) for a cluster, where a template made through one node's API
is used by every node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.policy import templates, templates_redis
from smtprelay.policy.templates import (
    Content,
    SQLiteTemplateStore,
    TemplateExists,
    TemplateStore,
)
from smtprelay.policy.templates_redis import RedisTemplateStore
from tests.redis_server import on_backend

WELCOME = Content("Hi {{name}}", "Hello {{name}}", None)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TemplateStore]:
    yield from on_backend(request, lambda: SQLiteTemplateStore(tmp_path / "state.db"),
                          RedisTemplateStore.from_url)


def test_create_get_update_delete_per_account(store: TemplateStore) -> None:
    made = store.create("acme", "welcome", WELCOME, at=1000.0)
    assert (made.name, made.content, made.created_at) == ("welcome", WELCOME, 1000.0)
    with pytest.raises(TemplateExists):
        store.create("acme", "welcome", WELCOME)
    # Another account's templates are its own: same name, no clash, nothing seen.
    store.create("other", "welcome", Content("x", None, "<p>x</p>"))
    assert store.get("acme", "welcome") == made
    assert store.get("nobody", "welcome") is None
    changed = Content("Hey {{name}}", None, "<b>{{name}}</b>")
    assert store.update("acme", "welcome", changed) is True
    assert store.update("acme", "missing", changed) is False
    found = store.get("acme", "welcome")
    assert found is not None and found.content == changed and found.created_at == 1000.0
    assert store.get("other", "welcome").content.html == "<p>x</p>"  # type: ignore[union-attr]
    assert store.delete("acme", "welcome") is True
    assert store.delete("acme", "welcome") is False
    assert store.get("acme", "welcome") is None
    assert store.get("other", "welcome") is not None


def test_pages_in_name_order(store: TemplateStore) -> None:
    names = [f"t{i:03d}" for i in range(25)]
    for name in reversed(names):
        store.create("acme", name, WELCOME)
    store.create("other", "t000a", WELCOME)
    seen: list[str] = []
    after = None
    while True:
        page = store.page("acme", after=after, limit=10)
        seen += [t.name for t in page]
        if len(page) < 10:
            break
        after = page[-1].name
    assert seen == names


def test_the_per_account_limit_holds(store: TemplateStore,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templates, "MAX_TEMPLATES", 3)
    monkeypatch.setattr(templates_redis, "MAX_TEMPLATES", 3)
    for i in range(3):
        store.create("acme", f"t{i}", WELCOME)
    with pytest.raises(templates.TooManyTemplates):
        store.create("acme", "t3", WELCOME)
    store.create("other", "t3", WELCOME)  # each account its own count
