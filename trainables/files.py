"""Reading settings and writing results safely: YAML without code or surprises, atomic writes.

YAML is read with a SafeLoader (no code), refusing a key given twice (YAML's default is: the last
wins) and aliases that expand without bound. A file written here never exists half-written under
its real name: it is written beside it and renamed into place.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from trainables.messages import bounded

MAX_YAML_NODES = 100_000  # a large experiment file has hundreds


class YamlError(ValueError):
    """Text that is not a plain YAML document of settings."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise YamlError(f"key {bounded(key)} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """Settings from YAML text: safe (no code), unique keys, and no alias bomb (aliases expanded size-bounded)."""
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise YamlError(f"not valid YAML: {' '.join(str(error).split())[:300]}") from None
    if _expanded_size(value, {}) > MAX_YAML_NODES:
        raise YamlError(
            f"expands to more than {MAX_YAML_NODES} values through aliases (*name): write the settings out instead"
        )
    return value


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """Values in `value` with every alias expanded, computed without expanding (shared nodes counted once each)."""
    if not isinstance(value, (list, dict)):
        return 1
    if id(value) not in sizes:
        sizes[id(value)] = MAX_YAML_NODES + 1  # a self-reference is unbounded
        children = value.values() if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(value)]


def read_yaml(path: Path) -> Any:
    """A YAML settings file: one-line YamlError for a missing, undecodable or malformed file."""
    if not path.is_file():
        raise YamlError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise YamlError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise YamlError(f"{path}: cannot read: {error.strerror}") from None
    try:
        return parse_yaml(text)
    except YamlError as error:
        raise YamlError(f"{path}: {error}") from None


def read_settings(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping of settings (an empty file is an empty mapping)."""
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise YamlError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return raw or {}


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary path)` beside `path`, then rename it into place: never a half-written `path`."""
    # A name of its own (two writers of one file never share a temporary), made with the usual
    # permissions: mkstemp's would be owner-only.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, newline=""))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Set a dotted key in the parsed YAML: `search.fraction.high=0.3`, `seeds=[0,1,2]`."""
    if "=" not in assignment:
        raise ValueError(f"override {bounded(assignment)} is not key=value")
    key, text = assignment.split("=", 1)
    try:
        value = parse_yaml(text)
    except YamlError as error:
        raise ValueError(f"override {key}: cannot read value {bounded(text)}: {error}") from None
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        # YAML 1.1 reads '1e-2' as a string; a user typing it on a command line means a number.
        value = float(value)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"override {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value
