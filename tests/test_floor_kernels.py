"""The bench's own floors are honest (issue 22): benchmarks/floor_kernels.cpp, built with the
flags of the independent programs of ../shared/limits (g++ -O3 -march=native -fopenmp), is at
least as fast as those programs (within 1.1x) on the stages both time.

Timing in a test is noisy on a shared machine, so: one OpenMP thread (each program keeps one
core), the same build flags, interleaved rounds (independent, own, independent, own, ...), the
minimum of each over batches of six rounds, continued for up to four batches before failing.
The own floors also get jump padding (benchmarks/floors.py, OWN_PLACEMENT_FLAGS): they run the same instructions as
the independent programs, and the padding guards them against losing by code placement alone.
A failure names the CPU and the build commands. Skipped where ../shared/limits (or
$CONVCRF_LIMITS_DIR) or a C++ compiler is missing. About 15 s, mostly compiling.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "convcrf_bench_floors", Path(__file__).resolve().parents[1] / "benchmarks" / "floors.py")
floors = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(floors)

HONEST = 1.1  # own floor / independent floor
ATTEMPTS, ROUNDS = 4, 6


def _machine(programs) -> str:
    """The CPU and the build commands, for a failure message read on another machine."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}; built: {programs.commands}"


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    if floors.compiler() is None:
        pytest.skip("no C++ compiler")
    if floors.limits_dir() is None:
        pytest.skip("no ../shared/limits beside the clone (or $CONVCRF_LIMITS_DIR)")
    built = floors.FloorPrograms(tmp_path_factory.mktemp("floors"), threads=1)
    assert built.independent and built.own, "\n".join(built.notes)
    return built


def _ratio_within(independent, own, bound: float) -> tuple[bool, list[float]]:
    """Min of own / min of independent over interleaved rounds, checked after each batch of
    ROUNDS and, above bound, continued (the minima accumulate) for up to ATTEMPTS batches.

    Accumulating, not restarting: on these VMs one process of either program can run its whole
    best-of-10 1.5x slower than the next (its memory, not its code: the plain read of the
    unary in fused_pass.cpp moves with it), so the floor is the minimum over many processes."""
    ratios, ind, mine = [], [], []
    for _ in range(ATTEMPTS):
        for _ in range(ROUNDS):
            ind.append(independent())
            mine.append(own())
        ratios.append(min(mine) / min(ind))
        if ratios[-1] <= bound:
            return True, ratios
    return False, ratios


def test_own_message_passing_floor_is_as_fast_as_the_independent_program(programs):
    c, h, w = floors.INDEPENDENT_MP_SIZE
    ok, ratios = _ratio_within(lambda: programs.independent_message_passing(7),
                               lambda: programs.own_floor("mp", 7, c, h, w, 200), HONEST)
    assert ok, (f"own message-passing floor / independent program: {ratios} (> {HONEST}) on "
                f"{_machine(programs)}")


def test_own_full_resolution_floor_is_as_fast_as_the_independent_program(programs):
    c, h, w = floors.INDEPENDENT_FUSED_SIZE
    try:
        programs.own_floor("fused", 1, c, h, w, 1)
    except floors.FloorError as error:
        pytest.skip(f"the full-resolution floor needs AVX2 + FMA: {error}")
    ok, ratios = _ratio_within(lambda: programs.independent_fused_pass(10),
                               lambda: programs.own_floor("fused", 1, c, h, w, 10), HONEST)
    assert ok, (f"own full-resolution floor / independent program: {ratios} (> {HONEST}) on "
                f"{_machine(programs)}")


def test_training_floors_run_and_time_their_pass(programs):
    """The floors of the two training passes (no independent program) run at the bench's sizes
    and at odd ones (run-time sizes)."""
    for size in (floors.INDEPENDENT_MP_SIZE, (5, 9, 37)):
        for stage in ("mpT", "kgrad"):
            assert programs.own_floor(stage, 7, *size, 3) > 0


def test_best_time_is_parsed_or_refused():
    assert floors.best_ms("message passing k=7, 2 threads: best 0.373 ms (64 GFLOP/s)") == 0.373
    assert floors.best_ms("fused pass: best 2.26 ms\nread: best 0.4 ms") == 2.26
    with pytest.raises(floors.FloorError, match="no 'best"):
        floors.best_ms("segmentation fault")


def test_own_floors_build_where_the_toolchain_lacks_the_placement_flags(tmp_path, monkeypatch):
    """The jump padding is optional: a toolchain without it still builds the own floors, plain,
    and says so."""
    if floors.compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("CONVCRF_LIMITS_DIR", str(tmp_path / "none"))  # own floors only
    monkeypatch.setattr(floors, "OWN_PLACEMENT_FLAGS", ["-Wa,--no-such-assembler-flag"])
    built = floors.FloorPrograms(tmp_path, threads=1)
    assert built.own and not built.independent
    assert any("built without -Wa,--no-such-assembler-flag" in note for note in built.notes)
    assert "--no-such-assembler-flag" not in built.commands["own"]
    assert built.own_floor("mp", 3, 2, 5, 9, 1) > 0
