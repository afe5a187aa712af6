"""Label aliases (data/aliases.yaml): which words name the dropout and noise classes in options and teaching.

The perturbation mechanics never change with an alias; only the words the model reads do. `none` shows the
canonical names with a description drawn per trial from a pool; `dropout_noise` (the paper's main zero-shot
alias) fixes the descriptions; other aliases show bare words unless the file gives descriptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .vocabulary import PERTURBATIONS


class AliasError(ValueError):
    """An unknown alias or alias set, or a malformed aliases file."""


@dataclass(frozen=True)
class Aliases:
    entries: dict
    sets: dict
    pool: dict

    def names(self, selection: list[str]) -> list[str]:
        """Alias names from a list of alias names and/or set names (sets expand in place, duplicates dropped)."""
        out = []
        for item in selection:
            expanded = self.sets.get(item, [item])
            for name in expanded:
                if name not in self.entries:
                    raise AliasError(f"unknown alias '{name}'; see data/aliases.yaml")
                if name not in out:
                    out.append(name)
        return out

    def groups(self) -> dict[str, str]:
        """Alias -> its group (canonical, swap, synonym, perturbation_like, placeholder, ...)."""
        return {name: entry["group"] for name, entry in self.entries.items()}

    def word(self, alias: str, kind: str) -> str:
        """The bare word for a class (teaching labels)."""
        return self.entries[alias][kind]

    def option(self, alias: str, kind: str, drawn: str) -> str:
        """Option text for a class: the word, with its description where the alias has one; `drawn` is the
        trial's draw from the description pool, used by aliases whose descriptions are the pool."""
        entry = self.entries[alias]
        descriptions = entry.get("descriptions")
        if descriptions is None:
            return entry[kind]
        return f"{entry[kind]} {drawn if descriptions == 'pool' else descriptions[kind]}"


def load_aliases(path: str | Path) -> Aliases:
    data = yaml.safe_load(Path(path).read_text())
    entries = data["aliases"]
    for name, entry in entries.items():
        missing = [kind for kind in PERTURBATIONS if kind not in entry]
        if missing:
            raise AliasError(f"{path}: alias '{name}' lacks a word for {missing}")
    aliases = Aliases(entries, data.get("sets", {}), data["description_pool"])
    for name, members in aliases.sets.items():
        aliases.names(members)  # every member must be defined
    return aliases
