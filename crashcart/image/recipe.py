"""Recipes: which Debian packages go into a toolbox, and how check-tools probes them.

A recipe is a plain text file:

    # comment
    key = value            setting: suite, mirror, variant, format, description, include
    tool: CMD [ARGS...]    a check-tools probe named after CMD; must exit 0
    tool: NAME = CMD ...   a probe with an explicit name
    tool: CMD              no arguments: only check that CMD's libraries resolve
    pkg1 pkg2              anything else: Debian package names

`include = NAME` pulls in a built-in recipe (or a file, relative to this one) first; its
packages and tools come before this file's, its settings are overridden by this file's.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources

from crashcart.errors import ImageError

BUILTIN = ("default", "minimal", "full")
SETTINGS = ("suite", "mirror", "variant", "format", "description", "include")
# Debian policy 5.6.1 package names, optionally =version or :arch
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$")
_SETTING = re.compile(r"^(?P<key>[a-z_]+)\s*=\s*(?P<value>.*)$")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Tool:
    name: str
    argv: list[str]  # empty: "libraries resolve" check

    def tsv(self) -> str:
        return "\t".join([self.name, *self.argv])


@dataclass
class Recipe:
    name: str
    packages: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)

    def setting(self, key: str, default: str) -> str:
        return self.settings.get(key, default)


def parse_recipe(text: str, name: str = "recipe") -> Recipe:
    """Parse recipe text (without resolving `include`)."""
    recipe = Recipe(name=name)
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line.startswith("tool:"):  # a probe may quote a '#'
            line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            _parse_line(recipe, line)
        except ValueError as e:
            raise ImageError(f"{name}:{lineno}: {e}") from None
    return recipe


def _parse_line(recipe: Recipe, line: str) -> None:
    if line.startswith("tool:"):
        recipe.tools.append(parse_tool(line[5:].strip()))
        return
    setting = _SETTING.match(line)
    if setting and setting["key"] in SETTINGS:
        recipe.settings[setting["key"]] = setting["value"].strip()
        return
    if setting and " = " in line:
        raise ValueError(f"unknown setting {setting['key']!r} (known: {', '.join(SETTINGS)})")
    for word in line.split():
        if not _PACKAGE.match(word):
            raise ValueError(f"not a Debian package name: {word!r}")
        recipe.packages.append(word)


def parse_tool(spec: str) -> Tool:
    """`CMD ARGS...` or `NAME = CMD ARGS...` (shell-like quoting)."""
    name: str | None = None
    head, sep, rest = spec.partition("=")
    if sep and _TOOL_NAME.match(head.strip()) and " " not in head.strip():
        name, spec = head.strip(), rest.strip()
    try:
        argv = shlex.split(spec)
    except ValueError as e:
        raise ValueError(f"tool: {e}") from None
    if not argv:
        raise ValueError("tool: needs a command")
    name = name or os.path.basename(argv[0])
    if not _TOOL_NAME.match(name):
        raise ValueError(f"tool: bad name {name!r}")
    return Tool(name=name, argv=argv if len(argv) > 1 or name != argv[0] else [])


def load_recipe(spec: str, _depth: int = 0) -> Recipe:
    """A built-in recipe by name, or a recipe file by path, with includes resolved."""
    text, name, base = _recipe_text(spec)
    recipe = parse_recipe(text, name)
    include = recipe.settings.pop("include", None)
    if include is None:
        return recipe
    if _depth > 8:
        raise ImageError(f"{name}: recipes include each other too deeply")
    if base and include not in BUILTIN and not os.path.isabs(include):
        include = os.path.join(base, include)
    return merge(load_recipe(include, _depth + 1), recipe)


def merge(base: Recipe, top: Recipe) -> Recipe:
    packages = list(dict.fromkeys(base.packages + top.packages))
    tools = {t.name: t for t in base.tools + top.tools}
    return Recipe(
        name=top.name,
        packages=packages,
        tools=list(tools.values()),
        settings={**base.settings, **top.settings},
    )


def _recipe_text(spec: str) -> tuple[str, str, str | None]:
    if spec in BUILTIN:
        res = resources.files("crashcart.image").joinpath(f"data/recipes/{spec}.recipe")
        return res.read_text(), spec, None
    try:
        with open(spec) as f:
            return f.read(), spec, os.path.dirname(os.path.abspath(spec))
    except OSError as e:
        raise ImageError(
            f"cannot read recipe {spec}: {e.strerror}",
            hint=f"built-in recipes: {', '.join(BUILTIN)}; or a file listing packages",
        ) from None
