"""Loading the file: YAML that refuses a key given twice, validation, and every problem
described by its key path as one ConfigError.

Relative paths in the file are resolved against the directory holding the file, so
the daemon behaves the same whatever its working directory is (systemd, a shell, CI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from smtprelay.config.schema import Config

ENV_CONFIG = "SMTPRELAY_CONFIG"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration, the file it came from and the text it was read from
    (worker processes are handed that text, not the file: app.workers)."""

    config: Config
    path: Path
    text: str = ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key given twice instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _describe(error: Any) -> list[str]:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = _location(loc)
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return [f"{where}: unknown key (check the spelling against config/smtprelay.example.yaml)"]
    if kind == "missing":
        return [f"{where}: required key is missing"]
    if kind == "literal_error":
        return [f"{where}: {message}, got {error.get('input')!r}"]
    if where == "(top level)":
        return message.splitlines()
    return [f"{where}: {line}" for line in message.splitlines()]


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative paths absolute against the config file's directory, in place."""

    def fix(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            path = Path(os.path.expanduser(section[key]))
            section[key] = os.path.normpath(path if path.is_absolute() else base / path)

    if raw.get("server") is None:
        raw["server"] = {}
    if isinstance(raw["server"], dict):
        raw["server"].setdefault("data_dir", "./var")
        fix(raw["server"], "data_dir")
    fix(raw.get("tls"), "cert_file")
    fix(raw.get("tls"), "key_file")
    fix(raw.get("api"), "key_file")
    delivery = raw.get("delivery")
    if isinstance(delivery, dict):
        fix(delivery.get("smarthost"), "ca_file")
        fix(delivery.get("smarthost"), "password_file")
    identities = raw.get("identities")
    if isinstance(identities, dict):
        for identity in identities.values():
            keys = identity.get("dkim") if isinstance(identity, dict) else None
            for key in keys if isinstance(keys, list) else ():
                fix(key, "key_file")
    tracking_domains = raw.get("tracking_domains")
    if isinstance(tracking_domains, dict):
        for domain in tracking_domains.values():
            for key in ("cert_file", "key_file", "apple_app_site_association", "assetlinks"):
                fix(domain, key)
    sets = raw.get("configuration_sets")
    if isinstance(sets, dict):
        for settings in sets.values():
            destinations = settings.get("event_destinations") if isinstance(
                settings, dict) else None
            for destination in destinations if isinstance(destinations, list) else ():
                fix(destination, "path")


def load_config(path: str | Path | None) -> LoadedConfig:
    """Read, parse and validate the configuration; raise ConfigError listing every problem.

    Only the file itself: the certificates, keys and variables it names are checked by
    `smtprelay.app.preflight`, for the commands that use them.
    """
    if path is None:
        path = os.environ.get(ENV_CONFIG)
    if not path:
        raise ConfigError("(none)", [f"no configuration file: pass -c FILE or set {ENV_CONFIG}"])
    file_path = Path(path).expanduser().absolute()
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file_path, ["the file does not exist"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file_path, [f"cannot be read: {exc}"]) from None
    return parse_config(text, file_path)


def parse_config(text: str, file_path: Path) -> LoadedConfig:
    """`text` as the configuration file at `file_path` (its relative paths are taken
    from there); ConfigError listing every problem."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file_path, [f"{where}YAML syntax error: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file_path, ["the top level must be a mapping of keys"])
    _resolve_paths(raw, file_path.parent)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = [line for error in exc.errors() for line in _describe(error)]
        raise ConfigError(file_path, problems) from None
    return LoadedConfig(config=config, path=file_path, text=text)
