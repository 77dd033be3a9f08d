"""Worker for the stopped-rank test: rank 1 stops answering, rank 0 must say so within the timeout.

    torchrun --nproc_per_node=2 tests/dist_timeout_worker.py {barrier|collective} TIMEOUT_S
"""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist


def main() -> int:
    from clip4vla.train.distributed import (
        DistributedTimeoutError,
        barrier,
        init_distributed,
        is_timeout,
        name_missing_ranks,
    )

    where, timeout = sys.argv[1], float(sys.argv[2])
    info = init_distributed(device="cpu", timeout_s=timeout)
    if info.rank == 1:
        time.sleep(10 * timeout)  # a hung file-system read, a SIGSTOPped process
        return 0
    try:
        if where == "barrier":
            barrier()
        else:
            try:
                dist.all_reduce(torch.ones(3))
            except RuntimeError as err:
                if is_timeout(err):
                    raise name_missing_ranks(err, probe_s=timeout) from err
                raise
    except DistributedTimeoutError as err:
        print(f"STOPPED: {err}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
