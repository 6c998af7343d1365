#!/usr/bin/env python
"""The Python steps of scripts/gpu_check.sh (run by it, from tests/, after the install).

3. tests/ops/test_cuda_ops.py (pytest when installed, else the small runner below: the lent GPU
   machines have no pytest and no network); then tests/ops/test_ort_ops_cuda.py, the ONNX
   Runtime custom ops on the CUDA execution provider, where onnxruntime-gpu is installed;
4. ConvCRF inference timed on the GPU: native CUDA kernels vs the F.unfold implementation;
5. scripts/validate_tensorrt.py (fp32 and fp16) when ``import tensorrt`` works.
Then prints the summary and writes the JSON (temporary file + rename) with the shell steps.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CUDA_TESTS = REPO / "tests" / "ops" / "test_cuda_ops.py"
ORT_CUDA_TESTS = REPO / "tests" / "ops" / "test_ort_ops_cuda.py"


# ---- a minimal runner for pytest-style test files ---------------------------------------------

class _Skip(Exception):
    pass


class _Mark:
    def __init__(self, kind, args, kwargs):
        self.kind, self.args, self.kwargs = kind, args, kwargs

    def __call__(self, fn):
        fn.__dict__.setdefault("_marks", []).append(self)
        return fn


def _pytest_stand_in() -> types.ModuleType:
    """The part of pytest's API that test_cuda_ops.py uses."""
    module = types.ModuleType("pytest")

    def importorskip(name):
        try:
            return importlib.import_module(name)
        except ImportError as error:
            raise _Skip(f"{name} not importable: {error}")

    def skip(reason=""):
        raise _Skip(reason)

    def fail(reason=""):
        raise AssertionError(reason)

    def fixture(fn=None, *, autouse=False):
        def mark(f):
            f._autouse = autouse
            return f
        return mark(fn) if fn is not None else mark

    module.importorskip, module.skip, module.fail, module.fixture = importorskip, skip, fail, fixture
    module.mark = types.SimpleNamespace(
        skipif=lambda condition, reason="": _Mark("skipif", (condition,), {"reason": reason}),
        parametrize=lambda names, values: _Mark("parametrize", (names, values), {}))
    return module


def _cases(fn):
    """Keyword-argument sets of a test function (cartesian product of its parametrize marks)."""
    axes = []
    for mark in getattr(fn, "_marks", []):
        if mark.kind == "parametrize":
            names = [n.strip() for n in mark.args[0].split(",")]
            axes.append([dict(zip(names, v if len(names) > 1 else (v,))) for v in mark.args[1]])
    for combination in itertools.product(*axes):
        kwargs = {}
        for part in combination:
            kwargs.update(part)
        yield kwargs


def run_without_pytest(path: Path) -> dict:
    sys.modules.setdefault("pytest", _pytest_stand_in())
    results = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except _Skip as skipped:
        results["skipped"] = 1
        results["failures"].append(f"module skipped: {skipped}")
        return results
    module_mark = getattr(module, "pytestmark", None)
    if isinstance(module_mark, _Mark) and module_mark.kind == "skipif" and module_mark.args[0]:
        results["failures"].append(f"module skipped: {module_mark.kwargs['reason']}")
        return results
    autouse = [f for f in vars(module).values() if callable(f) and getattr(f, "_autouse", False)]
    for name, fn in sorted(vars(module).items()):
        if not (name.startswith("test_") and callable(fn)):
            continue
        for kwargs in _cases(fn):
            label = f"{name}[{'-'.join(str(v) for v in kwargs.values())}]" if kwargs else name
            status = "passed"
            try:
                for fixture in autouse:
                    fixture()
                fn(**kwargs)
            except _Skip:
                status = "skipped"
            except Exception as error:  # noqa: BLE001 - every failure is reported
                status = "failed"
                results["failures"].append(f"{label}: {type(error).__name__}: {str(error)[:300]}")
            results[status] += 1
            print(f"   {label}: {status}", flush=True)
    return results


def run_cuda_tests(logs: Path, tests: Path = CUDA_TESTS, name: str = "cuda_tests") -> dict:
    start = time.perf_counter()
    env = dict(os.environ, CONVCRF_REQUIRE_NATIVE="1")
    if importlib.util.find_spec("pytest") is not None:
        log = logs / f"{name}.log"
        with log.open("w") as out:
            rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs",
                                  str(tests)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                 cwd=REPO / "tests")
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        # All skipped is a failure here: this kit runs where the tests must run.
        ok = rc == 0 and " passed" in tail[0]
        result = {"runner": "pytest", "status": "ok" if ok else "failed", "summary": tail[0],
                  "log": str(log)}
    else:
        os.environ["CONVCRF_REQUIRE_NATIVE"] = "1"
        counts = run_without_pytest(tests)
        ok = counts["failed"] == 0 and counts["passed"] > 0
        result = {"runner": "built-in (pytest not installed)", "status": "ok" if ok else "failed",
                  "summary": f"{counts['passed']} passed, {counts['failed']} failed, "
                             f"{counts['skipped']} skipped", "failures": counts["failures"]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def run_ort_cuda_tests(logs: Path) -> dict:
    """tests/test_ort_ops_cuda.py where it can run: skipped (with the reason) when onnxruntime
    has no CUDA execution provider or the CUDA variant of the custom-op library was not built
    (no ONNX Runtime headers at install time), failed when it runs and fails."""
    try:
        import onnxruntime

        from convcrf_deploy import _native
    except ImportError as error:
        return {"status": "skipped", "reason": f"not importable: {error}"}
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {"status": "skipped", "reason": f"onnxruntime {onnxruntime.__version__} has no CUDA "
                                               "execution provider (install onnxruntime-gpu)"}
    try:
        _native.ort_ops_library(cuda=True)
    except _native.NativeError as error:
        return {"status": "skipped", "reason": str(error).split(":")[0] + " (set ONNXRUNTIME_INCLUDE_DIR "
                                                                        "and run the kit again)"}
    return run_cuda_tests(logs, ORT_CUDA_TESTS, "ort_cuda_ops")


# ---- timing --------------------------------------------------------------------------------------

def time_convcrf(repeats: int = 20) -> dict:
    """ConvCRF inference on the GPU, native CUDA kernels vs the F.unfold implementation, timed
    interleaved in this process (CUDA-synchronised wall time per call; medians)."""
    import torch

    from convcrf_deploy import CRFConfig, ConvCRF, ops

    start = time.perf_counter()
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(1, 21, 375, 500, generator=generator) * 3).to(device)
    image = (torch.rand(1, 3, 375, 500, generator=generator) * 255).to(device)
    rows = []
    for k in (7, 11):
        config = CRFConfig(num_classes=21, filter_size=k)
        variants = {"native": ConvCRF(config).eval().to(device),
                    "unfold": ConvCRF(config, implementation="reference").eval().to(device)}
        for dtype in (torch.float32, torch.float16):
            z, rgb = logits.to(dtype), image.to(dtype)
            times = {name: [] for name in variants}
            with torch.inference_mode():
                for _ in range(3):  # warm-up: kernels loaded, allocator primed
                    for crf in variants.values():
                        crf(z, rgb)
                torch.cuda.synchronize()
                for _ in range(repeats):
                    for name, crf in variants.items():
                        t0 = time.perf_counter()
                        crf(z, rgb)
                        torch.cuda.synchronize()
                        times[name].append(1000 * (time.perf_counter() - t0))
                agreement = float((variants["native"](z, rgb).argmax(1)
                                   == variants["unfold"](z, rgb).argmax(1)).float().mean())
            native, unfold = (statistics.median(times[n]) for n in ("native", "unfold"))
            rows.append({"filter_size": k, "dtype": str(dtype).replace("torch.", ""),
                         "native_ms": round(native, 3), "unfold_ms": round(unfold, 3),
                         "speedup": round(unfold / native, 2), "label_agreement": agreement})
    return {"status": "ok", "setting": "375x500, 21 classes, 5 iterations, blur 4, batch 1",
            "native_cuda_library": ops.native_available("cuda"), "rows": rows,
            "seconds": round(time.perf_counter() - start, 1)}


# ---- TensorRT ------------------------------------------------------------------------------------

def run_tensorrt(plugin: str, logs: Path) -> dict:
    try:
        import tensorrt
    except ImportError:
        return {"status": "skipped", "reason": "tensorrt is not importable"}
    start = time.perf_counter()
    runs = []
    for extra in ([], ["--fp16"]):
        command = [sys.executable, str(REPO / "scripts" / "validate_tensorrt.py")] + extra
        if plugin:
            command += ["--plugin", plugin]
        log = logs / f"validate_tensorrt{'_fp16' if extra else ''}.log"
        try:
            with log.open("w") as out:
                rc = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, timeout=240)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        runs.append({"command": " ".join(command), "status": "ok" if rc == 0 else f"failed ({rc})",
                     "output_tail": log.read_text().strip().splitlines()[-6:], "log": str(log)})
    ok = all(run["status"] == "ok" for run in runs)
    return {"status": "ok" if ok else "failed", "tensorrt": tensorrt.__version__, "runs": runs,
            "seconds": round(time.perf_counter() - start, 1)}


# ---- report --------------------------------------------------------------------------------------

def read_steps(path: Path) -> dict:
    steps = {}
    for line in path.read_text().splitlines():
        name, status, seconds, log = line.split("\t")
        steps[name] = {"status": status, "seconds": int(seconds), "log": log}
    return steps


def environment(args) -> dict:
    info = {"gpu": args.gpu, "compute_capability": args.arch, "driver": args.driver,
            "python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    except ImportError:
        pass
    try:
        import convcrf_deploy

        info["convcrf_deploy"] = str(Path(convcrf_deploy.__file__).parent)
    except ImportError:
        pass
    return info


def summary(report: dict) -> str:
    lines = [f"GPU check: {report['environment']['gpu']} (sm_{report['environment']['compute_capability']})"]
    for name, step in report["steps"].items():
        detail = step.get("summary") or step.get("reason") or ""
        seconds = f"{step['seconds']}s" if "seconds" in step else ""
        lines.append(f"  {name:22} {step['status']:8} {seconds:>6}  {detail}")
    timing = report["steps"].get("timing", {})
    for row in timing.get("rows", []):
        lines.append(f"    ConvCRF k={row['filter_size']:<2} {row['dtype']:7}: native {row['native_ms']:.2f} ms, "
                     f"F.unfold {row['unfold_ms']:.2f} ms ({row['speedup']:.1f}x), "
                     f"labels agree {100 * row['label_agreement']:.2f} %")
    lines.append(f"result: {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--plugin", default="")
    parser.add_argument("--gpu", default="")
    parser.add_argument("--arch", default="")
    parser.add_argument("--driver", default="")
    parser.add_argument("--report-only", action="store_true",
                        help="only merge the shell steps into the report (the install failed)")
    args = parser.parse_args(argv)

    steps = read_steps(args.steps)
    if not args.report_only:
        steps["cuda_tests"] = run_cuda_tests(args.logs)
        steps["ort_cuda_ops"] = run_ort_cuda_tests(args.logs)
        try:
            steps["timing"] = time_convcrf()
        except Exception as error:  # noqa: BLE001 - reported, never a traceback
            steps["timing"] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        steps["tensorrt"] = run_tensorrt(args.plugin, args.logs)
    report = {"environment": environment(args), "steps": steps,
              "passed": all(step["status"] in ("ok", "skipped") for step in steps.values())}
    text = summary(report)
    print(text)
    from convcrf_deploy.files import write_text_atomic  # links, FIFOs, "-" (issue 21)
    write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.json}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
