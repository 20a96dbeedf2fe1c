"""Operation g in a fresh process: peak RSS growth while reading a whole session.

Peak RSS cannot be compared across implementations inside one process (the
allocator keeps what the previous one freed), so the runner starts this
module once per implementation and rep:

    python -m benchmarks.rss IMPL URL PREFIX EXPECTED

After a warm-up read (connection, caches) it resets the kernel's high-water
mark (``/proc/self/clear_refs``), reads every item, and prints the growth of
the peak over the resident size before the read, in MiB, as JSON.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sys

from sqlalchemy.engine import make_url

from .datasets import BIG_SESSION
from .impls import make_impl


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return int(match.group(1))


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # then VmHWM may include earlier peaks, which only overstates the growth


async def measure(impl_name: str, url: str, prefix: str, expected: int) -> float:
    impl = make_impl(impl_name, make_url(url))
    await impl.open()
    try:
        session = impl.session(BIG_SESSION, prefix)
        await session.get_items(limit=1)
        gc.collect()
        _reset_peak()
        before = _status_kib("VmRSS")
        items = await session.get_items()
        peak = _status_kib("VmHWM")
        if len(items) != expected:
            raise RuntimeError(f"read {len(items)} items, expected {expected}")
        return (peak - before) / 1024
    finally:
        await impl.close()


def main() -> None:
    impl_name, url, prefix, expected = sys.argv[1:5]
    growth = asyncio.run(measure(impl_name, url, prefix, int(expected)))
    print(json.dumps({"growth_mib": growth}))


if __name__ == "__main__":
    main()
