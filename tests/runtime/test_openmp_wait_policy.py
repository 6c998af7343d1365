"""Shared CPUs (issue 9): PyTorch's OpenMP threads must sleep, not spin, between ops.

OpenMP reads its wait policy once, when torch loads it; every way the runtime reaches torch
must therefore set ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose a policy) *before* the
first ``import torch``. Before this test, the torch backend's package imported torch (through
its warm-start module) ahead of the policy, so ``convcrf-run`` kept spinning threads and fell
from about 21 ms to 200-300 ms per frame whenever another process used the CPUs
(``benchmarks/bench_shared_cpu.py``).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
{imports}
assert "torch" in sys.modules, "the import under test did not load torch"
print(os.environ.get("OMP_WAIT_POLICY"))
"""


def policy_after(imports: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)],
                          capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("imports", [
    "import convcrf_deploy.runtime.backends.torch",
    "from convcrf_deploy.runtime.backends import backend_class; backend_class('torch')",
    "from convcrf_deploy.runtime.backends.torch.warm_start import WarmStartMeanField",
])
def test_the_torch_backend_sets_a_passive_wait_policy_before_torch_loads(imports):
    assert policy_after(imports) == "PASSIVE"


def test_a_policy_the_user_chose_is_kept():
    assert policy_after("import convcrf_deploy.runtime.backends.torch",
                        OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_the_benchmark_times_what_convcrf_run_runs():
    assert policy_after("import convcrf_deploy.benchmarking; import torch") == "PASSIVE"
