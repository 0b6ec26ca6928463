"""One rank of a 2-process CPU data-parallel step (gloo), for tests/test_distributed.py.

usage: ddp_worker.py RANK WORLD PORT DICT_DIR OUT.pt
For each wrapper (PyTorch DDP = fairseq's pytorch_ddp/c10d, and fairseq's legacy_ddp = no_c10d),
each rank takes its own share of a mixed-direction batch (languages absent on one rank are
present on the other), runs forward/backward through the DDP wrapper and one SGD step, and
saves the averaged LSLo gradients and the updated LSLo weights.
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import LSLO_FLAGS, build, make_batch, randomize_adapters  # noqa: E402
from test_distributed import FLAGS, SHARDS, sum_loss  # noqa: E402


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
    loss = sum_loss(out_logits, target, task.source_dictionary.pad())
    loss.backward()
    if backend == "legacy_ddp":
        wrapped.all_reduce_grads()  # fairseq's trainer calls this before the optimizer step
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(list(params.values()), lr=0.1)
    opt.step()
    return {"grads": grads, "weights": {n: p.detach().clone() for n, p in params.items()}}


def main() -> None:
    rank, world, port, dict_dir, out = sys.argv[1:6]
    rank, world = int(rank), int(world)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.save({b: step(b, rank, dict_dir) for b in ("pytorch_ddp", "legacy_ddp")}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
