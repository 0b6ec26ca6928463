"""``lslo-evaluate``: decode every direction with one model load, then score (see the library,
:mod:`fairseq_lslo.evaluation.run`)."""
from __future__ import annotations

import logging
import os
import sys

from ..evaluation.run import check_files, run
from .runner import run_tool

PROG = "lslo-evaluate"


def get_parser():
    from fairseq import options

    parser = options.get_generation_parser(default_task="translation_multi_simple_epoch")
    group = parser.add_argument_group("lslo-evaluate")
    group.add_argument("--out-dir", required=True, metavar="DIR",
                       help="receives gen/{src}-{tgt}.gen (+ .gen.json records), scores.tsv, scores.md, heatmap.png")
    group.add_argument("--directions", metavar="PAIRS", help="comma-separated directions to evaluate, each one of "
                                                              "--lang-pairs (default: all of --lang-pairs)")
    group.add_argument("--shard", metavar="I/N", help="decode only share I (0-based) of N of the directions, e.g. "
                                                      "one SLURM array task per GPU; implies --no-score")
    group.add_argument("--raw", metavar="DIR", help="plain-text references RAW/{gen-subset}.{lang} (for scoring)")
    group.add_argument("--lang-groups", metavar="FILE",
                       help="language groups for the score tables: rows 'code<TAB>[flores_code<TAB>]group' "
                            "(default: DATA/langs.tsv if there, else the checkpoint's LSLo configuration)")
    group.add_argument("--spm-model", metavar="FILE",
                       help="score spBLEU with this local SentencePiece model (the FLORES-101 one) instead of "
                            "sacrebleu's flores101 tokenizer, which downloads its model")
    group.add_argument("--no-score", action="store_true", help="decode only")
    group.add_argument("--lslo-adapters", metavar="FILE",
                       help="evaluate a plain base checkpoint (--path) with the adapters of this lslo-export file")
    group.add_argument("--progress-interval", type=float, default=30.0, metavar="S",
                       help="seconds between progress lines when stderr is not a terminal (default: 30)")
    return parser


def main(argv=None) -> int:
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_lslo  # noqa: F401  (registers the model; safe loading of fairseq checkpoints)

    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=os.environ.get("LOGLEVEL", "WARNING").upper(), stream=sys.stderr)
    args = options.parse_args_and_arch(get_parser(), argv)

    def body() -> int:
        check_files(args)  # fails before fairseq's configuration machinery prints its warnings
        return run(args, convert_namespace_to_omegaconf(args))

    return run_tool(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
