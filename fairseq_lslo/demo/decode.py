"""Decode every direction of the test set with fairseq's own generate, in one process.

``python -m fairseq_lslo.demo.decode --demo tiny --data DIR --path CKPT --out DIR`` runs
``fairseq_cli.generate`` once per direction, all in one process, with one configuration
whose languages change per direction (importing fairseq and building its configuration once
instead of once per direction is what saves minutes on a small model), and writes
``OUT/{src}-{tgt}.hyp``: the detokenized hypotheses in test-set order.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

from lslo_data_prep.score import read_hypotheses

from .commands import generate_args
from .config import CONFIGS


def generation_config(demo: str, data: str, ckpt: str, out_dir: str):
    """fairseq's generation config for the first direction; converting it is the slow part."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    langs = CONFIGS[demo].langs
    parser = options.get_generation_parser(default_task="translation_multi_simple_epoch")
    args = options.parse_args_and_arch(parser, generate_args(CONFIGS[demo], data, ckpt, langs[0], langs[1], out_dir))
    return convert_namespace_to_omegaconf(args)


def decode_direction(cfg, src: str, tgt: str, out_dir: str) -> str:
    """Decode one direction with fairseq's generate; returns the path of the .hyp file."""
    from fairseq_cli import generate
    from omegaconf import open_dict

    work = os.path.join(out_dir, f"gen-{src}-{tgt}")
    with open_dict(cfg):
        cfg.task.source_lang, cfg.task.target_lang = src, tgt
        cfg.common_eval.results_path = work
    with contextlib.redirect_stdout(io.StringIO()):
        generate.main(cfg)
    hyps = read_hypotheses(os.path.join(work, "generate-test.txt"))
    path = os.path.join(out_dir, f"{src}-{tgt}.hyp")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(hyps) + "\n")
    os.replace(tmp, path)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", choices=sorted(CONFIGS), required=True, help="demo size")
    p.add_argument("--data", required=True, help="binarized fine-tuning data directory")
    p.add_argument("--path", required=True, help="checkpoint to decode with")
    p.add_argument("--out", required=True, help="directory for the .hyp files")
    a = p.parse_args(argv)
    if not os.path.isfile(a.path):
        p.error(f"--path: no such checkpoint {a.path}")
    os.makedirs(a.out, exist_ok=True)
    langs = CONFIGS[a.demo].langs
    cfg = generation_config(a.demo, a.data, a.path, a.out)
    for src in langs:
        for tgt in langs:
            if src != tgt:
                decode_direction(cfg, src, tgt, a.out)
    print(f"decoded {len(langs) * (len(langs) - 1)} directions into {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
