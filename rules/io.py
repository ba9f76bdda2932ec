"""Rulebook YAML: written for people to read and edit, read back with errors that name file, line, field."""

from __future__ import annotations

from pathlib import Path

import yaml
from filelock import FileLock
from pydantic import ValidationError

from anomalens.errors import ConfigError
from anomalens.files import atomic_write, read_text
from anomalens.types import Rulebook

HEADER = """\
# anomalens rulebook: what is normal for this scene, learned from normal footage.
# Edit freely: change a limit (predicate.value), disable a rule (enabled: false), or delete it.
# Each rule: id, sentence (what people read), predicate (what the engine checks: fact op value, limited
# to objects matching `where`), margin (slack added beyond the normal extreme), stats (what it came from).
# Units: px and px^2 of the source frame, px/s for speed, body heights/s for relative_speed, s for dwell,
# compass sectors for direction, zones r{row}c{col} of a grid over the frame, or the names of the zones drawn
# under `zones` (polygons in fractions of the frame's width and height; draw them in `anomalens serve`).
"""


def rulebook_text(rulebook: Rulebook) -> str:
    """The YAML a rulebook is saved as."""
    return HEADER + yaml.safe_dump(rulebook.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=110)


def rulebook_lock(path: Path) -> FileLock:
    """The lock every writer of the rulebook at ``path`` holds: the app's review and zones, and learning again."""
    return FileLock(str(path) + ".lock", timeout=30)


def save_rulebook(rulebook: Rulebook, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, rulebook_text(rulebook))
    return path


def _line_of(node: yaml.Node | None, location: tuple) -> int | None:
    """1-based line of the YAML node at a pydantic error location (the deepest that exists)."""
    line = None if node is None else node.start_mark.line + 1
    for key in location:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _upgrade(data: dict, path: Path) -> dict:
    """A rulebook of an earlier schema in today's: version 3 checked speeds in px/frame (now px/s, at the rulebook's
    ``fps``); version 2 had no drawn zones either; version 1 had no rule kinds, and told a caption rule's kind by
    its operator (``not_in``: anomaly, ``in``: normal)."""
    version = data.get("schema_version", 1)
    if version == 1:
        rules = []
        for rule in data.get("rules") or []:
            predicate = rule.get("predicate") if isinstance(rule, dict) else None
            if isinstance(predicate, dict) and predicate.get("fact") == "caption" and "kind" not in rule:
                rule = {**rule, "kind": "anomaly" if predicate.get("op") == "not_in" else "normal"}
            rules.append(rule)
        data = {**data, "rules": rules}
    if version in (1, 2, 3):
        data = {**_per_second(data, path), "schema_version": 4}
    return data


def _per_second(data: dict, path: Path) -> dict:
    """Speed limits in px/frame (schema 3 and before) in px/s, at the frame rate the rulebook was learned at."""
    rules = data.get("rules") or []
    speeds = [r for r in rules if isinstance(r, dict) and isinstance(r.get("predicate"), dict)
              and r["predicate"].get("fact") == "speed"]  # fmt: skip
    if not speeds:
        return data
    fps = data.get("fps")
    if not isinstance(fps, (int, float)) or fps <= 0:
        raise ConfigError(f"{path}: its speed limits are per frame and it has no fps to say them per second: "
                          "learn the scene again with `anomalens induce-rules`")  # fmt: skip
    upgraded = []
    for rule in rules:
        predicate = rule.get("predicate") if isinstance(rule, dict) else None
        value = predicate.get("value") if rule in speeds else None
        numbers = value if isinstance(value, list) else [value]
        if numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            value = [v * fps for v in value] if isinstance(value, list) else value * fps
            rule = {**rule, "predicate": {**predicate, "value": value, "unit": "px/s"}}
        upgraded.append(rule)
    return {**data, "rules": upgraded}


# A learned rulebook of a busy scene is 30-100 KB; ten times that is a mistake (or a file that is not one), and
# YAML's aliases let 117 KB expand to 100 MB: a rulebook is read without them.
MAX_RULEBOOK_BYTES = 2_000_000


class _NoAliases(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "an alias (*name): a rulebook spells every value out",
                                              self.peek_event().start_mark)  # fmt: skip
        return super().compose_node(parent, index)


def load_rulebook(path: str | Path) -> Rulebook:
    """Read a rulebook; malformed YAML or fields raise ``ConfigError`` naming file, line and field."""
    path = Path(path)
    if path.is_file() and (size := path.stat().st_size) > MAX_RULEBOOK_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes is not a rulebook (at most {MAX_RULEBOOK_BYTES:,})")
    return parse_rulebook(read_text(path, "rulebook"), path)


def parse_rulebook(text: str, path: Path) -> Rulebook:
    """The rulebook in ``text``, read from ``path`` (named in errors): for a caller that also needs the text itself,
    from the same read."""
    if len(text) > MAX_RULEBOOK_BYTES:
        raise ConfigError(f"{path}: {len(text):,} characters is not a rulebook (at most {MAX_RULEBOOK_BYTES:,})")
    try:
        data = yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader that also refuses aliases
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {error.problem or error.context}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a rulebook is a mapping with a 'rules' list, got {type(data).__name__}")
    data = _upgrade(data, path)
    try:
        return Rulebook.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = tuple(first["loc"])
        line = _line_of(yaml.compose(text, Loader=_NoAliases), location)
        field = ".".join(str(p) for p in location) or "(top level)"
        raise ConfigError(f"{path}:{line}: {field}: {first['msg']}") from None
