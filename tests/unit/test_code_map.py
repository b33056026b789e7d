"""The README's code map names every module of shared/ in the row of its folder (its layer)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def code_map_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    rows = {}
    for line in text[text.index("Code map:"):].splitlines():
        if line.startswith("| `shared/"):
            folder = line.split("`")[1]
            rows[folder] = line
        elif rows and not line.startswith("|"):
            break
    return rows


def test_every_module_is_in_its_folders_row():
    rows = code_map_rows()
    missing = []
    for folder in ("domain", "app", "adapters", "ui", "testing"):
        row = rows[f"shared/{folder}/"]
        for path in sorted((ROOT / "shared" / folder).iterdir()):
            name = path.name
            if name.startswith("__") or name.endswith(".pyc"):
                continue
            shown = f"`{name}/`" if path.is_dir() else f"`{name}`"
            if shown not in row:
                missing.append(f"shared/{folder}/{name}")
    assert missing == []


def test_every_folder_of_shared_has_a_row():
    folders = {f"shared/{p.name}/" for p in (ROOT / "shared").iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders <= set(code_map_rows())
