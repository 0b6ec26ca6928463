"""fairseq-generate run in-process on a test split, its hypotheses read back per sentence (for comparisons)."""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Dict, Sequence


@dataclass(frozen=True)
class Generated:
    """One sentence's best hypothesis as fairseq-generate printed it."""

    pieces: str  # the H line's text (no --post-process: SentencePiece pieces, language tokens stripped)
    score: float  # natural log (fairseq prints base 2)


def generate_args(data: str, ckpt: str, src: str, tgt: str, pairs: Sequence[str], user_dir: str,
                  beam: int = 5, extra: Sequence[str] = ()) -> list:
    return [data, "--user-dir", user_dir, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(pairs),
            "--encoder-langtok", "src", "--decoder-langtok", "-s", src, "-t", tgt, "--path", ckpt,
            "--gen-subset", "test", "--beam", str(beam), "--cpu", "--num-workers", "0", *extra]


def fairseq_generate(argv: Sequence[str]) -> Dict[int, Generated]:
    """Run fairseq's generate with command-line ``argv`` in this process; {sentence id: best hypothesis}."""
    from fairseq import options
    from fairseq_cli import generate

    with tempfile.TemporaryDirectory() as out:
        parser = options.get_generation_parser(default_task="translation_multi_simple_epoch")
        args = options.parse_args_and_arch(parser, [*argv, "--results-path", out])
        with contextlib.redirect_stdout(io.StringIO()):
            generate.main(args)
        with open(os.path.join(out, "generate-test.txt"), encoding="utf-8") as f:
            text = f.read()
    found: Dict[int, Generated] = {}
    for m in re.finditer(r"^H-(\d+)\t(\S+)\t(.*)$", text, flags=re.M):
        found[int(m.group(1))] = Generated(m.group(3), float(m.group(2)) * math.log(2))
    return found
