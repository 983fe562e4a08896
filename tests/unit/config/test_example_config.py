"""config/smtprelay.example.yaml documents every key of the schema and stays valid."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from smtprelay.app.preflight import load_checked
from smtprelay.config import Config, ConfigError
from smtprelay.transform import dkim

EXAMPLE = Path(__file__).parents[3] / "config" / "smtprelay.example.yaml"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def missing_keys(model: type[BaseModel], value: Any, path: str) -> list[str]:
    missing: list[str] = []
    for name, field in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        if not isinstance(value, dict) or name not in value:
            missing.append(where)
            continue
        sub = _model_of(field.annotation)
        child = value[name]
        if sub is None:
            continue
        origin = typing.get_origin(field.annotation)
        if origin is dict and isinstance(child, dict):
            # Maps of named entries: every field must appear in at least one entry.
            gaps = [set(missing_keys(sub, entry, f"{where}.*")) for entry in child.values()]
            missing.extend(sorted(set.intersection(*gaps)) if gaps else [f"{where}.*"])
        elif origin is list and isinstance(child, list):
            gaps = [set(missing_keys(sub, entry, f"{where}[]")) for entry in child]
            missing.extend(sorted(set.intersection(*gaps)) if gaps else [f"{where}[]"])
        else:
            missing.extend(missing_keys(sub, child, where))
    return missing


def test_every_key_is_documented() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert missing_keys(Config, raw, "") == []


def test_example_is_valid_apart_from_the_certificate_and_key_files(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("generate_self_signed: false",
                                       "generate_self_signed: true")
    copy = tmp_path / "example.yaml"
    copy.write_text(text)
    # Without the DKIM key files, those keys (and nothing else) are the problems...
    with pytest.raises(ConfigError) as info:
        load_checked(copy)
    raw = yaml.safe_load(text)
    wanted = [(domain, index, entry["key_file"])
              for domain, identity in raw["identities"].items()
              for index, entry in enumerate(identity.get("dkim", []))]
    assert wanted
    assert [p.split(" ", 1)[0] for p in info.value.problems] == [
        f"identities.{domain}.dkim[{index}].key_file:" for domain, index, _ in wanted]
    # ...and with keys where the example puts them, it loads.
    keys = tmp_path / "dkim"
    keys.mkdir()
    for _, index, path in wanted:
        moved = keys / Path(path).name
        text = text.replace(path, str(moved))
        dkim.write_key(moved, dkim.generate_key("rsa" if index == 0 else "ed25519"))
    copy.write_text(text)
    assert load_checked(copy).config.listeners
