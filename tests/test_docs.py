"""Docs that run: every ```bash and ```python block of README.md and docs/*.md, on the shared tiny run.

A block runs in a fresh temporary directory (bash blocks under ``bash -euo pipefail``, python blocks
with this interpreter) with the tiny run's variables in the environment (``USER_DIR DATA SPM RAW
BASE CKPT PAIRS TINY_ARCH``), this checkout first on ``PYTHONPATH`` and this interpreter's
``bin/`` first on ``PATH``.  The line just before an opening fence may say

    <!-- docs: not-run REASON -->    the block is not run here; REASON says why (615M checkpoint,
                                     SLURM, a GPU, network, a long run) and must be given
    <!-- docs: slow -->              the block runs under ``make test-all`` only (marker ``slow``)

Blocks in other languages (``text``, ``json``, output) are never run.  One test per block, named
``FILE:LINE`` (the line of its opening fence), so a broken example fails a named test.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNABLE = ("bash", "python")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*docs:\s*(?P<kind>[\w-]+)(?P<rest>.*?)-->\s*$")
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: Optional[str]  # "not-run", "slow" or None
    reason: str  # the text after the marker's kind

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


class DocsFormatError(ValueError):
    """A page's fences or markers cannot be read as this harness expects."""


def extract_blocks(text: str, path: str) -> List[Block]:
    """Every fenced block of a markdown text, with the docs marker on the line before it."""
    lines = text.splitlines()
    blocks: List[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks = len(m["indent"]), m["ticks"]
        info = m["info"].strip().split()
        start = i
        body: List[str] = []
        i += 1
        while i < len(lines):
            close = FENCE.match(lines[i])
            if close and len(close["ticks"]) >= len(ticks) and not close["info"].strip():
                break
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        else:
            raise DocsFormatError(f"{path}:{start + 1}: code fence is never closed")
        marker, reason = None, ""
        if start > 0:
            mk = MARKER.match(lines[start - 1])
            if mk:
                marker, reason = mk["kind"], mk["rest"].strip()
        blocks.append(Block(path, start + 1, info[0] if info else "", "\n".join(body) + "\n", marker, reason))
        i += 1
    return blocks


def doc_files() -> List[str]:
    docs = os.path.join(ROOT, "docs")
    pages = sorted(f"docs/{name}" for name in os.listdir(docs) if name.endswith(".md")) if os.path.isdir(docs) else []
    return ["README.md"] + pages


def read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def all_blocks() -> List[Block]:
    return [b for path in doc_files() for b in extract_blocks(read(path), path)]


def runnable_blocks() -> List[Block]:
    return [b for b in all_blocks() if b.lang in RUNNABLE]


def block_env(tiny_env: Dict[str, str]) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(tiny_env)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_block(block: Block, cwd: str, env: Dict[str, str]) -> subprocess.CompletedProcess:
    if block.lang == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        script = os.path.join(cwd, "docs_block.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(block.code)
        argv = [sys.executable, script]
    return subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=BLOCK_TIMEOUT_S)


def params(not_run: bool) -> List:
    out = []
    for b in runnable_blocks():
        if (b.marker == "not-run") != not_run:
            continue
        marks = [pytest.mark.slow] if b.marker == "slow" else []
        out.append(pytest.param(b, id=b.id, marks=marks))
    return out


# --- the harness itself ------------------------------------------------------------------------

SAMPLE = """\
# Title

```bash
echo one
```

<!-- docs: not-run needs a GPU -->
```python
print("two")
```

<!-- docs: not-run -->
```bash
echo three
```

  ```text
  output
  ```

<!-- docs: slow -->
````bash
cat <<'EOF'
```
EOF
````
"""


def test_extract_blocks_reads_fences_markers_and_lines():
    blocks = extract_blocks(SAMPLE, "x.md")
    assert [(b.line, b.lang, b.marker) for b in blocks] == [
        (3, "bash", None), (8, "python", "not-run"), (13, "bash", "not-run"), (17, "text", None), (22, "bash", "slow")]
    assert blocks[0].code == "echo one\n"
    assert blocks[1].reason == "needs a GPU" and blocks[2].reason == ""
    assert blocks[3].code == "output\n"
    assert blocks[4].code == "cat <<'EOF'\n```\nEOF\n"


def test_unclosed_fence_is_an_error():
    with pytest.raises(DocsFormatError, match="x.md:2: code fence is never closed"):
        extract_blocks("text\n```bash\necho\n", "x.md")


def test_every_docs_marker_sits_on_a_runnable_fence():
    """A marker with a blank line after it, or on an output block, would be silently ignored."""
    problems = []
    for path in doc_files():
        lines = read(path).splitlines()
        for n, line in enumerate(lines):
            m = MARKER.match(line)
            if not m:
                continue
            nxt = FENCE.match(lines[n + 1]) if n + 1 < len(lines) else None
            info = nxt["info"].strip().split() if nxt else []
            if not info or info[0] not in RUNNABLE:
                problems.append(f"{path}:{n + 1}: the marker is not directly above a ```bash or ```python fence")
            elif m["kind"] not in ("not-run", "slow"):
                problems.append(f"{path}:{n + 1}: unknown docs marker {m['kind']!r} (not-run REASON, slow)")
    assert not problems, "\n".join(problems)


def test_relative_links_point_to_existing_files():
    problems = []
    for path in doc_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(path)):
            if re.match(r"^[a-z]+:", target):
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if not os.path.exists(os.path.join(ROOT, resolved)):
                problems.append(f"{path}: link to {target} ({resolved} does not exist)")
    assert not problems, "\n".join(problems)


def test_source_files_the_docs_name_exist():
    """`fairseq_lslo/...`, `bench/...`, `tests/...` paths in the pages follow the code when it moves."""
    problems = []
    for path in doc_files():
        for name in re.findall(r"`((?:fairseq_lslo|lslo_data_prep|bench|recipes|tests)/[\w./-]+?)(?:::[\w*\[\]-]+)?`",
                               read(path)):
            if not os.path.exists(os.path.join(ROOT, name)):
                problems.append(f"{path}: `{name}` does not exist")
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_door():
    """At most 200 lines, and its first screen gives the two commands."""
    lines = read("README.md").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"
    first_screen = "\n".join(lines[:30])
    assert re.search(r"^make demo\b", first_screen, re.M) and re.search(r"^make test\b", first_screen, re.M)


def test_readme_and_make_help_agree():
    """Every ``make TARGET`` the README names is a target that ``make help`` describes."""
    makefile = read("Makefile")
    help_targets = set(re.findall(r'@echo "make ([\w-]+)', makefile))
    help_targets.add("help")
    named = set(re.findall(r"`make ([\w-]+)", read("README.md"))) | set(re.findall(r"^make ([\w-]+)", read("README.md"), re.M))
    assert {"demo", "test"} <= help_targets
    assert named and named <= help_targets, f"README names make targets that make help does not list: {named - help_targets}"
    for target in named:
        assert re.search(rf"^(\S+ )*{re.escape(target)}( \S+)*:", makefile, re.M), f"no Makefile rule for {target}"


# --- the blocks ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def docs_env(tiny_run) -> Dict[str, str]:
    return block_env(tiny_run.env())


@pytest.mark.parametrize("block", params(not_run=True))
def test_docs_block_not_run_says_why(block: Block):
    assert block.reason, f"{block.id}: <!-- docs: not-run --> needs a reason (e.g. 'needs the 615M checkpoint')"


@pytest.mark.parametrize("block", params(not_run=False))
def test_docs_block(block: Block, docs_env: Dict[str, str], tmp_path):
    started = time.monotonic()
    try:
        done = run_block(block, str(tmp_path), docs_env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{block.id}: still running after {BLOCK_TIMEOUT_S} s\n{(e.output or '')[-3000:]}")
    took = time.monotonic() - started
    assert done.returncode == 0, (
        f"{block.id} ({block.lang}) exited with {done.returncode} after {took:.1f} s; last output:\n"
        f"{done.stdout[-4000:]}\n--- the block ---\n{block.code}")
