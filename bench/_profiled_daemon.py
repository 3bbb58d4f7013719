"""``python -m kei_gateway ...`` under cProfile, every thread, for ``bench/upload.py`` (``KEI_BENCH_PROFILE``).

The reactor thread and each thread-pool thread get their own profiler (``threading.setprofile``
starts one in every new thread); at exit their statistics are merged into
``$KEI_BENCH_PROFILE_OUT`` (read it with ``python -m pstats``).
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
from typing import Any

profiles: list[cProfile.Profile] = []


def _start_in_thread(frame: Any, event: str, arg: Any) -> None:
    profile = cProfile.Profile()
    profiles.append(profile)
    profile.enable()  # replaces this hook for the rest of the thread


def main() -> None:
    import os

    out = os.environ["KEI_BENCH_PROFILE_OUT"]
    threading.setprofile(_start_in_thread)
    main_profile = cProfile.Profile()
    profiles.append(main_profile)
    sys.argv = ["kei_gateway", *sys.argv[1:]]
    code: object = 0
    main_profile.enable()
    try:
        runpy.run_module("kei_gateway", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        main_profile.disable()
        stats = pstats.Stats(main_profile)
        for profile in profiles[1:]:
            try:
                stats.add(profile)
            except (TypeError, ValueError):
                pass  # a thread that never ran Python code under the profiler
        stats.dump_stats(out)
    sys.exit(code)


if __name__ == "__main__":
    main()
