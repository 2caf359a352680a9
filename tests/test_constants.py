"""The house rule "every batch, shard and info key in constants.py": key strings are defined once, in
``lightning_prophrl.constants``, and library code names them instead of writing the string by hand."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from lightning_prophrl import constants as K

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_prophrl"
# Where rollout info dicts are built and read: a bare ``info`` there is a ``BatchedEnv.step`` info or a
# ``RolloutBatch.info``. Elsewhere ``info`` is other metadata (LeRobot ``meta/info.json`` and HDF5 attributes in the
# datamodules, stage reports in the applications), so only the ``.info`` attribute (``RolloutBatch.info``) is checked
# there. Meta-World's own per-step dict is called ``step_info`` and is not ours.
ROLLOUT_PACKAGES = ("envs", "rl", "modules", "models", "callbacks")
KEY_METHODS = ("get", "pop", "setdefault")
SECTION = re.compile(r"^# ---- (.+) ----$")
BATCH_SECTION, INFO_SECTION = "Batch keys produced by the datamodules", "Keys of a rollout's info dict"


def _is_info(node: ast.AST, bare_name: bool) -> bool:
    """``x.info`` (any file), or the name ``info`` (rollout packages only)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "info"
    return bare_name and isinstance(node, ast.Name) and node.id == "info"


def _is_str(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def literal_info_keys(source: str, bare_name: bool = True) -> tuple[list[str], int]:
    """The places in ``source`` that use a string literal as an info key, and how many info-key uses were checked.

    Checked: ``info[k]``, ``info.get(k, ...)`` / ``.pop`` / ``.setdefault``, ``k in info`` / ``not in``, the keys of a
    dict literal assigned to ``info`` or passed to ``info.update``, with ``info`` as in :func:`_is_info`.
    """
    found, checked = [], 0

    def check(key: ast.AST | None, node: ast.AST, what: str) -> None:
        nonlocal checked
        checked += 1
        if _is_str(key):
            found.append(f"line {node.lineno}: {what} with the literal {key.value!r}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and _is_info(node.value, bare_name):
            check(node.slice, node, "info[...]")
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _is_info(node.func.value, bare_name)
        ):
            if node.func.attr in KEY_METHODS and node.args:
                check(node.args[0], node, f"info.{node.func.attr}(...)")
            elif node.func.attr == "update" and node.args and isinstance(node.args[0], ast.Dict):
                for key in node.args[0].keys:
                    check(key, node, "info.update({...})")
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            if any(_is_info(c, bare_name) for c in node.comparators):
                check(node.left, node, "... in info")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_is_info(t, bare_name) for t in targets):
                for key in node.value.keys:
                    check(key, node, "info = {...}")
    return found, checked


def _library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_checker_flags_literal_keys_and_accepts_names():
    bad = """
info["success"]
batch.info.get("video_lengths", None)
runs[0].info.pop("steps")
if "draws_agree" in rollouts.info: pass
info = {"success_prob": p, K.INFO_SCORE: s}
info.update({"draw_score": s})
"""
    found, checked = literal_info_keys(bad)
    assert len(found) == 6 and checked == 7, found
    good = "info[K.INFO_SUCCESS]\nbatch.info.get(K.INFO_VIDEO_LENGTHS)\ninfo = {INFO_STEPS: s}\nkey in batch.info\n"
    assert literal_info_keys(good) == ([], 4)
    # outside the rollout packages a bare ``info`` is other metadata; ``.info`` is still a RolloutBatch's
    assert literal_info_keys('info["features"]\nb.info["x"]', bare_name=False)[0] == [
        "line 2: info[...] with the literal 'x'"
    ]


def test_library_code_names_info_keys_instead_of_writing_strings():
    offenders, checked = [], 0
    for path in _library_files():
        rel = path.relative_to(PACKAGE)
        found, n = literal_info_keys(path.read_text(), bare_name=rel.parts[0] in ROLLOUT_PACKAGES)
        offenders += [f"{rel} {f}" for f in found]
        checked += n
    assert checked >= 10, f"only {checked} info-key uses found: the checker no longer sees the library's rollout code"
    assert not offenders, "use the INFO_* constants of lightning_prophrl.constants:\n" + "\n".join(offenders)


def _sections() -> dict[str, list[str]]:
    """Constant names of ``constants.py`` by the ``# ---- title ----`` comment above them."""
    path = Path(K.__file__)
    headers = [
        (i + 1, m.group(1)) for i, line in enumerate(path.read_text().splitlines()) if (m := SECTION.match(line))
    ]
    out: dict[str, list[str]] = defaultdict(list)
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign):
            continue
        title = next((t for line, t in reversed(headers) if line < node.lineno), "")
        for target in node.targets:
            out[title] += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return out


def test_info_keys_have_their_own_section():
    sections = _sections()
    info = next((names for title, names in sections.items() if title.startswith(INFO_SECTION)), None)
    assert info, f"no '# ---- {INFO_SECTION} ... ----' section in constants.py"
    assert all(name.startswith("INFO_") for name in info), info
    elsewhere = [n for title, names in sections.items() if not title.startswith(INFO_SECTION) for n in names]
    assert not [n for n in elsewhere if n.startswith("INFO_")], "INFO_* constants belong in the info section"


@pytest.mark.parametrize("title", [BATCH_SECTION, INFO_SECTION, "Keys of one episode sample"])
def test_keys_of_a_section_are_unique(title):
    names = next((names for t, names in _sections().items() if t.startswith(title)), None)
    assert names, f"no section {title!r} in constants.py"
    by_value: dict[str, list[str]] = defaultdict(list)
    for name in names:
        value = getattr(K, name)
        assert isinstance(value, str), f"{name} = {value!r} is not a key string"
        by_value[value].append(name)
    assert not {v: n for v, n in by_value.items() if len(n) > 1}, "two constants share a key string"


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "lightning_prophrl.envs.base",
            ["INFO_SUCCESS", "INFO_STEPS", "INFO_SUCCESS_NOW", "INFO_EXECUTED", "INFO_EE_POSE"],
        ),
        ("lightning_prophrl.envs", ["INFO_SUCCESS", "INFO_STEPS", "INFO_SUCCESS_NOW", "INFO_EXECUTED", "INFO_EE_POSE"]),
        (
            "lightning_prophrl.envs.world_model",
            ["INFO_SCORE", "INFO_DRAW_SUCCESS", "INFO_DRAW_SCORE", "INFO_DRAWS_AGREE"],
        ),
        ("lightning_prophrl.models.reward", ["INFO_VIDEO_LENGTHS"]),
    ],
)
def test_info_keys_stay_importable_from_their_old_modules(module, names):
    import importlib

    mod = importlib.import_module(module)
    assert {n: getattr(mod, n) for n in names} == {n: getattr(K, n) for n in names}
