"""The docs' Troubleshooting page names every error a user can cause; this test keeps it so.

The rule, checked mechanically over pipelines/**/*.py:

* A user error is a call of PodiumError, of a subclass in pipelines/errors.py, or of any class in
  pipelines/ deriving from them: `raise ConfigError(...)`, and also `return PodiumError(...)` in a
  helper that builds the error for a `raise` elsewhere.
* Its fragment is the longest literal run of its message (the text between the interpolations of
  a string constant, an f-string, or a `+` of those; a message held in a variable is followed to
  its one assignment in the same function), stripped of surrounding spaces and punctuation and
  cut to its first 40 characters.
* That fragment must appear on docs/troubleshooting.md, the docs site's Troubleshooting page, so a row
  there quotes it.

A message with no literal run of MIN_FRAGMENT characters (the warehouse's own text, messages
assembled by a helper) is listed in DYNAMIC with the page's fragments it maps to; each entry must
still match such a site, so the list cannot go stale.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from tests.helpers import REPO

PIPELINES = REPO / "pipelines"
MIN_FRAGMENT = 12
MAX_FRAGMENT = 40
PUNCTUATION = " .,:;()'\"`"

# (file, function) -> Troubleshooting fragments for error sites whose message has no usable literal run.
# `in_source`: the fragments are Podium's own text, so they must also still be in that file.
DYNAMIC: dict[tuple[str, str], tuple[tuple[str, ...], bool]] = {
    # pydantic's validation errors, each rewritten by config_files._describe
    ("pipelines/config_files.py", "_validate"): (
        ("unknown key", "remove it or fix its spelling", "missing key", "(fix this value)"),
        True,
    ),
    # a bad table name in tables.yaml: the file, then dialect.check_identifier's message
    ("pipelines/stages/ingest.py", "read_manifest"): (("is not a valid SQL identifier",), False),
    # DuckDB's and Snowflake's own message for SQL they refuse (`podium sql`, feature SQL models)
    ("pipelines/warehouse/duckdb.py", "_failed"): (("Binder Error", "Parser Error"), False),
    ("pipelines/warehouse/snowpark.py", "_guard"): (("SQL compilation error",), False),
}


@dataclass(frozen=True)
class Site:
    """One construction of a user error: where, in which function, and its fragment ('' if none)."""

    path: str
    line: int
    function: str
    fragment: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


def troubleshooting() -> str:
    """docs/troubleshooting.md, the Troubleshooting page: everything under its `# Troubleshooting` title."""
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    match = re.search(r"^# Troubleshooting\n(.*)", text, flags=re.M | re.S)
    assert match, "docs/troubleshooting.md has no `# Troubleshooting` title"
    return match.group(1).replace("\\|", "|")


def modules() -> dict[str, ast.Module]:
    return {
        str(p.relative_to(REPO)): ast.parse(p.read_text(), str(p)) for p in sorted(PIPELINES.rglob("*.py"))
    }


def error_classes(trees: dict[str, ast.Module]) -> set[str]:
    """PodiumError and every class in pipelines/ (errors.py and elsewhere) that derives from it."""
    found = {"PodiumError"}
    classes = [node for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    while True:
        more = {c.name for c in classes if any(_name(base) in found for base in c.bases)} - found
        if not more:
            return found
        found |= more


def sites(trees: dict[str, ast.Module], classes: set[str]) -> list[Site]:
    out = []
    for path, tree in trees.items():
        for function in [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ] + [tree]:
            for node in _own_nodes(function):
                if isinstance(node, ast.Call) and _name(node.func) in classes:
                    message = _message(node, function)
                    parts = _literals(message) if message is not None else None
                    out.append(
                        Site(path, node.lineno, getattr(function, "name", "<module>"), _fragment(parts))
                    )
    return out


def test_error_classes_are_found() -> None:
    assert {"PodiumError", "ConfigError", "WarehouseError", "DataQualityError"} <= error_classes(modules())


def test_every_user_error_is_in_troubleshooting() -> None:
    section = troubleshooting()
    trees = modules()
    found = sites(trees, error_classes(trees))
    assert len(found) > 40, "the scan found too few error sites: is the rule still right?"
    missing = [
        f"{site}: docs/troubleshooting.md lacks {site.fragment!r} (from this error's message); add a row "
        "quoting it"
        for site in found
        if len(site.fragment) >= MIN_FRAGMENT and site.fragment not in section
    ]
    assert not missing, "\n".join(missing)


def test_messages_without_a_literal_run_are_listed() -> None:
    trees = modules()
    dynamic = [s for s in sites(trees, error_classes(trees)) if len(s.fragment) < MIN_FRAGMENT]
    unlisted = [
        f"{site} (in {site.function}): its message has no literal run of {MIN_FRAGMENT}+ characters; "
        "write one into the message, or list the site in DYNAMIC with the page's fragments it maps to"
        for site in dynamic
        if (site.path, site.function) not in DYNAMIC
    ]
    assert not unlisted, "\n".join(unlisted)


def test_dynamic_entries_are_current_and_documented() -> None:
    section = troubleshooting()
    trees = modules()
    dynamic = {
        (s.path, s.function) for s in sites(trees, error_classes(trees)) if len(s.fragment) < MIN_FRAGMENT
    }
    problems = []
    for (path, function), (fragments, in_source) in DYNAMIC.items():
        if (path, function) not in dynamic:
            problems.append(
                f"DYNAMIC lists {path} {function}, which no longer builds such an error: remove the entry"
            )
        source = (REPO / path).read_text() if (REPO / path).is_file() else ""
        for fragment in fragments:
            if fragment not in section:
                problems.append(
                    f"{path} {function}: docs/troubleshooting.md lacks {fragment!r}; add a row quoting it"
                )
            if in_source and fragment not in source:
                problems.append(
                    f"{path} {function}: {fragment!r} is no longer in {path}; update DYNAMIC and the page"
                )
    assert not problems, "\n".join(problems)


def test_the_fragment_rule() -> None:
    def fragment(code: str) -> str:
        function = ast.parse(f"def f(x):\n    {code}").body[0]
        call = next(
            n for n in ast.walk(function) if isinstance(n, ast.Call) and _name(n.func) == "PodiumError"
        )
        message = _message(call, function)
        return _fragment(_literals(message) if message is not None else None)

    assert (
        fragment('raise PodiumError(f"unknown family {x!r}: choose one of {x} or all.")') == "unknown family"
    )
    assert (
        fragment('raise PodiumError("nothing to promote: pass --alias.")')
        == "nothing to promote: pass --alias"
    )
    assert (
        fragment('raise PodiumError(f"{x} failed checks: " + "; ".join(x) + ". Fix it.")') == "failed checks"
    )
    assert (
        fragment('message = f"the {x} is empty: fix it."\n    raise PodiumError(message)')
        == "is empty: fix it"
    )
    assert fragment("raise PodiumError(str(x))") == ""
    assert len(fragment(f'raise PodiumError("{"a" * 80}")')) == MAX_FRAGMENT


# --- the rule's parts -------------------------------------------------------------------


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """Nodes of a function (or module) body, not descending into nested functions or classes."""
    out, stack = [], list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _message(call: ast.Call, scope: ast.AST) -> ast.expr | None:
    """The message argument; a variable is followed to its one assignment in the same function."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Name):
        assigned = [
            n.value
            for n in _own_nodes(scope)
            if isinstance(n, ast.Assign)
            and [_name(t) for t in n.targets] == [arg.id]
            and n.lineno < call.lineno
        ]
        return assigned[0] if len(assigned) == 1 else None
    return arg


def _literals(node: ast.expr) -> list[str] | None:
    """The message's literal runs, in order; an interpolated value ends a run. None: not a string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        runs = [""]
        for value in node.values:
            if isinstance(value, ast.Constant):
                runs[-1] += value.value
            else:
                runs.append("")
        return runs
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literals(node.left), _literals(node.right)
        if left is None or right is None:
            return None
        return [*left[:-1], left[-1] + right[0], *right[1:]]
    return ["", ""]  # a value (a call, a name): a boundary between runs


def _fragment(runs: list[str] | None) -> str:
    if not runs:
        return ""
    longest = max((run.strip(PUNCTUATION) for run in runs), key=len)
    return longest[:MAX_FRAGMENT].rstrip()
