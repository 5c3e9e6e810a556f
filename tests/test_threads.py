"""Kernels run on every core: TVM alone would use half of them (it assumes hyper-threading)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_tilecraft_sizes_the_tvm_thread_pool_to_every_core():
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    code = "import tvm, tilecraft; print(tvm.get_global_func('runtime.NumThreads')())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert int(out.split()[-1]) == len(os.sched_getaffinity(0))


def test_a_users_tvm_num_threads_wins():
    env = dict(os.environ, TVM_NUM_THREADS="1")
    code = "import tvm, tilecraft; print(tvm.get_global_func('runtime.NumThreads')())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert int(out.split()[-1]) == 1
