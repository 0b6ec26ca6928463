"""One rank of a 2-process CPU data-parallel step (gloo), for tests/test_distributed.py.

usage: ddp_worker.py RANK WORLD PORT DICT_DIR OUT.pt
For each wrapper (PyTorch DDP = fairseq's pytorch_ddp/c10d, and fairseq's legacy_ddp = no_c10d),
each rank takes its own share of the batch (rank 0: one language pair, rank 1: mixed directions
with a language absent on rank 0), runs forward/backward through the DDP wrapper and one Adam
step (fairseq's Adam), and saves the averaged LSLo gradients, the updated LSLo weights, the
batch's uniform (src, tgt) language ids and, for legacy_ddp, the parameters whose local
gradient was None before the all-reduce (none must be).
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import LSLO_FLAGS, build, make_batch, randomize_adapters  # noqa: E402
from test_distributed import FLAGS, SHARDS, adam, sum_loss  # noqa: E402


def step(backend: str, rank: int, dict_dir: str) -> dict:
    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + FLAGS)
    randomize_adapters(model, seed=7, scale=0.3)
    model.train()
    if backend == "pytorch_ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    else:
        from fairseq.distributed import LegacyDistributedDataParallel

        wrapped = LegacyDistributedDataParallel(model, process_group=dist.group.WORLD)
    directions, lengths, tgt_lengths, seed = SHARDS[rank]
    net_input, target = make_batch(task, directions, lengths, tgt_lengths, seed=seed)
    out_logits = wrapped(**net_input)[0]
    langs = model.encoder.lslo_router.languages
    loss = sum_loss(out_logits, target, task.source_dictionary.pad())
    loss.backward()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    none_local = [n for n, p in params.items() if p.grad is None]
    if backend == "legacy_ddp":
        wrapped.all_reduce_grads()  # fairseq's trainer calls this before the optimizer step
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    adam(params.values()).step()
    return {"grads": grads, "weights": {n: p.detach().clone() for n, p in params.items()},
            "uniform": (langs.src_uniform, langs.tgt_uniform), "none_local": none_local}


def main() -> None:
    rank, world, port, dict_dir, out = sys.argv[1:6]
    rank, world = int(rank), int(world)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.save({b: step(b, rank, dict_dir) for b in ("pytorch_ddp", "legacy_ddp")}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
