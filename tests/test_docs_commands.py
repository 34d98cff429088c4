"""Every command shown in the README and the docs site runs: each `kdgrid ...` line of a shell code block
parses with kdgrid's own parser (and the YAML files it names exist), each `make` target exists in the
Makefile, each `python -m` module and each script run exists. Usage synopses live in `text` blocks."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from orchestrator.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|"}


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command line) for each line of the page's shell code blocks, `\\` continuations joined."""
    lines = []
    for token in MarkdownIt("commonmark").parse(text):
        if token.type != "fence" or token.info.strip().lower() not in SHELL:
            continue
        first = token.map[0] + 2  # the fence's own line, then its content (1-based)
        pending, start = "", first
        for i, line in enumerate(token.content.splitlines()):
            if not pending:
                start = first + i
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            lines.append((start, pending + line))
            pending = ""
    return lines


def commands(line: str) -> list[list[str]]:
    """The simple commands of a line: comments dropped, split at && || ; |, leading VAR=value dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out, current = [], []
    for tok in lexer:
        if tok in SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(tok)
    out.append(current)
    cleaned = []
    for cmd in out:
        while cmd and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            cleaned.append(cmd)
    return cleaned


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (REPO / "Makefile").read_text(), flags=re.M))


def _yaml_paths(args) -> list[str]:
    """The YAML inputs a parsed kdgrid command reads from the checkout (a user's own files, such as a
    Slurm config, are not checked)."""
    refs = [getattr(args, "search", None), getattr(args, "scale", None)]
    refs += str(getattr(args, "tables", "") or "").split(",")
    return [r for r in refs if r and r.endswith((".yaml", ".yml"))]


def _python_module(cmd: list[str]) -> bool:
    return bool(re.fullmatch(r"python(3(\.\d+)?)?", Path(cmd[0]).name)) and len(cmd) > 2 and cmd[1] == "-m"


def _script(cmd: list[str]) -> str | None:
    if Path(cmd[0]).name in ("bash", "sh") and len(cmd) > 1:
        cmd = cmd[1:]
    return cmd[0] if cmd[0].startswith(("scripts/", "benchmarks/", ".ci/")) else None


def is_ours(cmd: list[str]) -> bool:
    """kdgrid, make, python -m and the checkout's scripts; other programs (ruff, pip, ...) are not ours to check."""
    return Path(cmd[0]).name in ("kdgrid", "make") or _python_module(cmd) or _script(cmd) is not None


def problem(cmd: list[str]) -> str | None:
    """Why this command of ours would not run, or None."""
    program = Path(cmd[0]).name
    if program == "kdgrid":
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = build_parser().parse_args(cmd[1:])
        except SystemExit as exit_:
            if exit_.code:
                return f"kdgrid refuses it: {stderr.getvalue().strip().splitlines()[-1]}"
            return None  # --help
        missing = [p for p in _yaml_paths(args) if not (REPO / p).is_file()]
        return f"no such file: {', '.join(missing)}" if missing else None
    if program == "make":
        targets = [t for t in cmd[1:] if not t.startswith("-") and "=" not in t]
        unknown = [t for t in targets if t not in make_targets()]
        return f"no make target {', '.join(unknown)}" if unknown else None
    if _python_module(cmd):
        return None if importlib.util.find_spec(cmd[2]) is not None else f"no module {cmd[2]}"
    script = _script(cmd)
    return None if (REPO / script).is_file() else f"no such script {script}"


SHOWN = [
    pytest.param(cmd, id=f"{page.relative_to(REPO)}:{number}: {' '.join(cmd)[:60]}")
    for page in PAGES
    for number, line in shell_lines(page.read_text())
    for cmd in commands(line)
    if is_ours(cmd)
]


@pytest.mark.parametrize("cmd", SHOWN)
def test_command_shown_in_the_docs_runs(cmd):
    assert problem(cmd) is None, problem(cmd)


def test_the_readme_shows_its_two_commands_and_kdgrid_commands_are_checked():
    readme = [c for _, line in shell_lines((REPO / "README.md").read_text()) for c in commands(line)]
    assert ["make", "reproduce"] in readme and ["make", "test"] in readme
    assert not is_ours(["ruff", "check", "."]) and not is_ours(["pip", "install", "-e", "."])
    assert sum(1 for p in SHOWN if p.values[0][0] == "kdgrid") >= 20


@pytest.mark.parametrize(
    "line, why",
    [
        ("kdgrid plan --no-such-flag", "kdgrid refuses it: kdgrid: error: unrecognized arguments: --no-such-flag"),
        ("kdgrid reproduce --launcher k8s", "kdgrid refuses it:"),
        ("kdgrid tune ablations/no-such-search.yaml --trials 2", "no such file: ablations/no-such-search.yaml"),
        ("KDGRID_X=1 make no-such-target", "no make target no-such-target"),
        (".venv/bin/python -m benchmarks.bench_nothing", "no module benchmarks.bench_nothing"),
        ("bash scripts/no-such.sh", "no such script scripts/no-such.sh"),
    ],
)
def test_a_command_that_would_not_run_is_named(line, why):
    (cmd,) = commands(line)
    assert problem(cmd) is not None and problem(cmd).startswith(why)


def test_blocks_continuations_and_comments_are_read_as_a_shell_would():
    page = """Text.

```bash
kdgrid tune ablations/search-alpha-beta.yaml --scale mini \\
    --trials 12   # a comment
KDGRID_REQUIRE_SLURM=1 make test && make check
```

```text
kdgrid plan [--scale mini]
```

- In a list:

    ```bash
    make bench
    ```
"""
    lines = shell_lines(page)
    assert [n for n, _ in lines] == [4, 6, 16]
    assert [c for _, line in lines for c in commands(line)] == [
        ["kdgrid", "tune", "ablations/search-alpha-beta.yaml", "--scale", "mini", "--trials", "12"],
        ["make", "test"],
        ["make", "check"],
        ["make", "bench"],
    ]
