"""Floor programs for the CPU figures: find, build and time them (used by bench_crf.py and
tests/test_floor_kernels.py).

Two sources, both built with the independent programs' flags (``g++ -O3 -march=native
-fopenmp``) and run as processes of their own with ``OMP_NUM_THREADS=threads``, so that each
is timed under the same conditions:

* the **independent programs** of ``../shared/limits`` beside the clone (or the folder
  ``$CONVCRF_LIMITS_DIR``): ``message_passing.cpp`` (one message passing, 21 classes on the
  94 x 125 grid of a 375 x 500 image at blur 4; argument k) and ``fused_pass.cpp`` (one
  full-resolution mean-field pass, 21 x 375 x 504; argument: repetitions). Written outside
  this project, they are the yardstick; absent, their column is skipped with a note.
* ``floor_kernels.cpp`` beside this file: the same plain loops at any size, plus the two
  passes of training (transposed message passing, kernel gradient) the independent programs
  do not cover. It must be at least as fast as the independent programs (checked by
  tests/test_floor_kernels.py and printed by the bench).

Each program prints a line with ``best <ms> ms``: the fastest of its repetitions. The own
floors are also built with ``OWN_PLACEMENT_FLAGS`` (jump alignment, below), which changes where
instructions lie, not which ones run.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OWN_SOURCE = HERE / "floor_kernels.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp"]
#: Added to the own floors' build only, when the assembler takes it. The own and the independent
#: full-resolution floors execute the same instructions (callgrind: 185.5 M per three passes
#: each), so only where they lie and what memory they get can tell them apart. On
#: Skylake-derived CPUs (Intel's "JCC erratum") a jump that crosses or ends on a 32-byte boundary
#: leaves the decoded-uop cache, which costs a hot loop up to ~20 % depending on where the linker
#: happened to put it. Padding such jumps keeps our floor from losing to that accident (a floor
#: must be at least as fast as the independent one, never slower by luck).
OWN_PLACEMENT_FLAGS = ["-Wa,-mbranches-within-32B-boundaries"]

#: Sizes the independent programs are written for: (classes, low-res height, low-res width)
#: of message_passing.cpp and (classes, height, width) of fused_pass.cpp.
INDEPENDENT_MP_SIZE = (21, 94, 125)
INDEPENDENT_FUSED_SIZE = (21, 375, 504)

_BEST = re.compile(r"best\s+([0-9]+(?:\.[0-9]+)?)\s*ms")


class FloorError(RuntimeError):
    """A floor program could not be built or did not print its time."""


def limits_dir() -> Path | None:
    """The folder of the independent programs, or None when it is not there."""
    env = os.environ.get("CONVCRF_LIMITS_DIR")
    folder = Path(env) if env else REPO.parent / "shared" / "limits"
    if (folder / "message_passing.cpp").is_file() and (folder / "fused_pass.cpp").is_file():
        return folder
    return None


def compiler() -> str | None:
    """The C++ compiler: $CXX, else g++ (the independent programs' compiler), else c++."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def best_ms(output: str) -> float:
    """The ``best <ms> ms`` figure of a floor program's output."""
    match = _BEST.search(output)
    if not match:
        raise FloorError(f"no 'best ... ms' in the output: {output.strip()[-300:]!r}")
    return float(match.group(1))


class FloorPrograms:
    """The floor programs built into ``workdir`` for this CPU.

    ``independent`` is False (with the reason in ``notes``) when ``../shared/limits`` or a
    compiler is missing; ``own`` likewise for floor_kernels.cpp. Times are in milliseconds.
    """

    def __init__(self, workdir: str | Path, threads: int):
        self.workdir = Path(workdir)
        self.threads = threads
        self.notes: list[str] = []
        self._cxx = compiler()
        self._programs: dict[str, Path] = {}
        self.commands: dict[str, str] = {}  # how each program was built, for reports
        limits = limits_dir()
        if self._cxx is None:
            self.notes.append("no C++ compiler (set CXX): floor figures skipped")
        elif limits is None:
            self.notes.append("no independent floor programs (../shared/limits beside the clone "
                              "or $CONVCRF_LIMITS_DIR): that column is skipped")
        if self._cxx is not None and limits is not None:
            self._build("mp", limits / "message_passing.cpp")
            self._build("fused", limits / "fused_pass.cpp")
        if self._cxx is not None:
            self._build("own", OWN_SOURCE, optional_flags=OWN_PLACEMENT_FLAGS)
        self.independent = "mp" in self._programs and "fused" in self._programs
        self.own = "own" in self._programs

    def _build(self, name: str, source: Path, optional_flags: list[str] | None = None) -> None:
        """Build ``source`` with FLAGS (and ``optional_flags`` where the toolchain takes them)."""
        out = self.workdir / f"floor_{name}"
        cmd = [self._cxx, *FLAGS, *(optional_flags or []), str(source), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 and optional_flags:  # e.g. an assembler without the flag
            self.notes.append(f"{source.name}: built without {' '.join(optional_flags)} "
                              "(not supported by this toolchain)")
            cmd = [self._cxx, *FLAGS, str(source), "-o", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            self.notes.append(f"building {source.name} failed ({' '.join(cmd)}):\n"
                              f"{proc.stderr[-600:]}")
            return
        self._programs[name] = out
        self.commands[name] = " ".join(cmd)

    def _run(self, name: str, *args) -> float:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        env.pop("OMP_WAIT_POLICY", None)  # the programs' own OpenMP defaults, as when run by hand
        proc = subprocess.run([str(self._programs[name]), *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=300)
        if proc.returncode != 0:
            raise FloorError(f"{self._programs[name].name} {' '.join(map(str, args))} failed: "
                             f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        return best_ms(proc.stdout)

    def independent_message_passing(self, k: int) -> float:
        """One message passing of the independent program (21 x 94 x 125, 200 repetitions)."""
        return self._run("mp", k)

    def independent_fused_pass(self, reps: int) -> float:
        """One full-resolution pass of the independent program (21 x 375 x 504)."""
        return self._run("fused", reps)

    def own_floor(self, stage: str, k: int, classes: int, height: int, width: int,
                  reps: int) -> float:
        """floor_kernels.cpp: stage mp, mpT, kgrad (low-resolution sizes) or fused (full-resolution
        sizes, k ignored)."""
        return self._run("own", stage, k, classes, height, width, reps)
