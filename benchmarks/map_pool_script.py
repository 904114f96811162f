"""
The chunked `multiprocessing.Pool` script that ``asynqueue map`` is measured
against: the JSON lines of ``math.sqrt`` over the lines of stdin, as they
complete, on 2 processes. Usage: ``python map_pool_script.py [CHUNKSIZE]``.
"""

import json
import math
import sys
from multiprocessing import Pool


def work(pair):
    i, x = pair
    try:
        return {"index": i, "input": x, "result": math.sqrt(x)}
    except Exception as e:
        return {"index": i, "input": x, "error": f"{type(e).__name__}: {e}"}


if __name__ == "__main__":
    chunksize = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    inputs = enumerate(json.loads(line) for line in sys.stdin if line.strip())
    with Pool(2) as pool:
        for record in pool.imap_unordered(work, inputs, chunksize):
            sys.stdout.write(json.dumps(record) + "\n")
