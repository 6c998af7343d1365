"""``convcrf-run``: real-time segmentation of a camera, stream, video, image folder or the demo
scene, with a HUD, recording and statistics (a thin layer over :mod:`convcrf_deploy.runtime`).

Examples::

    convcrf-run --video demo                                  # built-in scene, scored live
    convcrf-run --video cam0 --model model.onnx --view side-by-side
    convcrf-run --video clip.mp4 --model model.onnx --headless --save out.mp4 \\
        --stats-json stats.json
    convcrf-run --video bag:drive.mcap --topic /camera/image_raw --save-bag results \\
        --foxglove 8765                                       # ROS bags, docs/robotics.md
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import describe_error
from ..files import (JSON_SUFFIXES, STDOUT, OutputPathError, check_output_paths,
                     write_text_atomic)
from ..metadata import RESIZE_POLICIES
from ..progress import Progress
from ..runtime.backends.base import CRF_EXECUTOR_CHOICES
from ..runtime.backends.registry import ALIASES, BACKENDS, backends_help
from ..runtime.streams.files import check_recording_target
from ..runtime.visualize import VIEWS
from .harness import (CommandError, ExitCode, PlainHelpFormatter, SourceLostError, UsageError,
                      add_model_loading_arguments, command, frame_size, int_at_least,
                      load_model_argument, positive_float, positive_int, signal_exit_code,
                      unary_settings_given)

#: smallest demo scene (SyntheticScene's minimum side).
MIN_DEMO_SIDE = 32


def _alpha(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--alpha must be in 0..1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convcrf-run", description=__doc__.split("\n\n")[0],
        formatter_class=PlainHelpFormatter,
        epilog="keys in the window: q quit, space pause, c toggle the CRF, v cycle the view\n"
               "exit status: 0 done; 1 the run failed, or an output (--save, --save-bag, "
               "--foxglove) failed\nduring it (the others are still written); 2 bad arguments "
               "or input; 3 a library is missing;\n4 the camera/stream was lost or stalled and "
               "could not be reconnected; 130/143/129 ended by\nCtrl-C/SIGTERM/SIGHUP (the "
               "recording and --stats-json are written either way; outputs are written\n"
               "atomically and never replace an input)")
    parser.add_argument("--video", default="demo", metavar="SOURCE",
                        help="demo | cam0 | 0 | /dev/video0 | v4l2:///dev/video0 | rtsp://... | "
                             "http://... | file.mp4 | folder | 'glob/*.png' | frames_%%04d.png "
                             "| bag:PATH (ROS bag, with --topic) (default: demo). Folders and "
                             "globs are read in natural order (2 before 10) and skip label maps "
                             "(*_5labels.png, VOC's SegmentationClass/)")
    parser.add_argument("--model", default="demo",
                        help="'demo', a checkpoint (.pt), a unary saved as a torch.export "
                             "program (.pt2) or TorchScript, an ONNX file or a TensorRT engine")
    parser.add_argument("--backend", metavar="NAME",
                        help=f"{', '.join(BACKENDS)} (aliases: {', '.join(ALIASES)}); default: "
                             f"chosen from the model file type. {backends_help()}")
    parser.add_argument("--device", default="cpu", help="torch backend: cpu or cuda")
    parser.add_argument("--providers", default="cpu",
                        help="onnxruntime: comma-separated, e.g. cpu | cuda,cpu | "
                             "tensorrt,cuda,cpu (default: cpu)")
    parser.add_argument("--plugin", metavar="LIB",
                        help="ConvCRF TensorRT plugin library (plugin-flavour ONNX, engines)")
    parser.add_argument("--threads", type=positive_int,
                        help="CPU threads for inference (default: the backend's, all cores)")
    parser.add_argument("--crf-executor", choices=CRF_EXECUTOR_CHOICES,
                        help="onnxruntime: who runs the CRF: native (the native library, the "
                             "unary in ONNX Runtime; an error saying why when it cannot) or "
                             "graph (the exported graph's own CRF nodes); default: native when "
                             "possible. --stats-json and the HUD split the frame time into "
                             "pre-processing, unary, CRF and post-processing")
    parser.add_argument("--url", default="127.0.0.1:8000", metavar="HOST:PORT",
                        help="triton backend: the server (--model is the model's name there; "
                             "docs/serving.md); default 127.0.0.1:8000")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http",
                        help="triton backend: http (port 8000) or grpc (port 8001)")
    parser.add_argument("--request-timeout", type=positive_float, default=10.0, metavar="S",
                        help="triton backend: seconds per request before giving up (default 10)")
    parser.add_argument("--resize", choices=RESIZE_POLICIES,
                        help="override the model's resize policy")
    parser.add_argument("--headless", action="store_true", help="no window")
    parser.add_argument("--save", metavar="OUT", help="record rendered frames: a video (.mp4, "
                        ".avi, .mov, .mkv, .m4v) or an image pattern such as frames_%%05d.png")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    parser.add_argument("--stats-json", metavar="FILE", help="write run statistics as JSON "
                        "(- : to standard output, the summary table then goes to stderr)")
    parser.add_argument("--no-crf", action="store_true", help="unary only (compare with the CRF)")
    parser.add_argument("--view", choices=VIEWS, default="overlay")
    parser.add_argument("--alpha", type=_alpha, default=0.5, help="overlay opacity (0..1)")
    parser.add_argument("--no-hud", action="store_true", help="do not draw the HUD")
    parser.add_argument("--warm-start", action="store_true",
                        help="video: start mean-field from the previous frame's result (mixed "
                             "50/50 with the current unary) and run --warm-start-iterations "
                             "instead of the model's iterations; torch backend, and onnxruntime "
                             "with the native CRF executor. On the demo scene at 320x240 "
                             "(benchmarks/bench_runtime.py) 2 warm iterations halve the CRF's "
                             "CPU time (6 vs 12 ms/frame) for 0.2 points of mIoU, and score "
                             "better than 2 cold iterations")
    parser.add_argument("--warm-start-iterations", type=int, default=2, metavar="K",
                        help="mean-field iterations per warm-started frame (default 2)")
    parser.add_argument("--size", type=frame_size(MIN_DEMO_SIDE), default="320x240", metavar="WxH",
                        help="demo scene size (default 320x240)")
    parser.add_argument("--seed", type=int, default=0, help="demo scene seed")
    parser.add_argument("--fps", type=positive_float, help="frame rate of the recording (default: "
                        "the source's, else 30; a rate the video cannot hold, e.g. 89.863, is "
                        "rounded to one it can, with a warning)")
    parser.add_argument("--reconnect", type=int_at_least(0), default=5, metavar="N",
                        help="reconnect attempts for cameras and streams (default 5)")
    parser.add_argument("--stall-timeout", type=positive_float, default=10.0, metavar="S",
                        help="cameras and streams: seconds without a frame (or to open) before "
                             "reconnecting; after --reconnect failed attempts the run ends "
                             "with status 4 (default 10)")
    ros = parser.add_argument_group("ROS bags and Foxglove (docs/robotics.md)")
    ros.add_argument("--topic", help="bag: sources: the image topic (sensor_msgs Image or "
                     "CompressedImage); may be omitted when the bag has one")
    ros.add_argument("--list-topics", action="store_true",
                     help="bag: sources: list the image topics with message counts and exit")
    ros.add_argument("--rate", type=float, metavar="R", help="bag: sources: replay in real "
                     "time at R x the recorded rate, skipping frames that are late (default: "
                     "as fast as possible)")
    ros.add_argument("--save-bag", metavar="OUT", help="write labels, overlay and latency per "
                     "frame into a new rosbag2 folder OUT, stamped like the input")
    ros.add_argument("--bag-storage", choices=("mcap", "sqlite3"),
                     help="storage of --save-bag (default mcap)")
    ros.add_argument("--bag-overlay", choices=("jpeg", "bgr8"),
                     help="overlay in --save-bag as a JPEG CompressedImage (default) or a bgr8 "
                          "Image")
    ros.add_argument("--foxglove", metavar="[HOST:]PORT", help="serve overlay, labels and "
                     "latency live to Foxglove over WebSocket (host 127.0.0.1 by default)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_model_loading_arguments(parser)
    return parser


def _model_backend_mismatch(model: str, backend: str) -> str | None:
    """Why ``model`` cannot run on ``backend`` (and what to pass instead), or None."""
    if backend == "torch":
        return None
    suffix = Path(model).suffix.lower()
    if model == "demo" or suffix in (".pt", ".pth", ".pt2"):
        name = "the demo model" if model == "demo" else f"{model} (a PyTorch checkpoint)"
        stem = "demo" if model == "demo" else Path(model).with_suffix("").as_posix()
        if backend == "tensorrt":
            return (f"{name} runs on --backend torch; for TensorRT, export and build an engine "
                    f"and pass it: convcrf-export {model} --flavor plugin -o {stem}.onnx && "
                    f"convcrf-build {stem}.onnx -o {stem}.engine, then --model {stem}.engine")
        return (f"{name} runs on --backend torch; for ONNX Runtime, export it and pass the "
                f".onnx: convcrf-export {model} -o {stem}.onnx, then --model {stem}.onnx")
    return None


@command("convcrf-run")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from ..runtime import BackendUnavailableError, InputSizeError, Segmenter
    from ..runtime.backends import backend_name_for, backend_spec
    from ..runtime.streams import SourceError, open_source
    from ..runtime.video import display_available, run_video

    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.warm_start_iterations < 1:
        raise UsageError(f"--warm-start-iterations must be >= 1, got "
                         f"{args.warm_start_iterations}")
    try:  # every output, before anything is opened or loaded
        # A bag source is its path after "bag:" (new-user trial: --stats-json over the
        # input bag was written, exit 0).
        video = args.video.strip()
        check_output_paths({"--save": args.save, "--stats-json": args.stats_json,
                            "--save-bag": args.save_bag},
                           {"--video": video[len("bag:"):] if video.startswith("bag:")
                            else args.video, "--model": args.model},
                           folder_outputs=("--save-bag",),
                           suffixes={"--stats-json": JSON_SUFFIXES})
        if args.save:
            check_recording_target(args.save)   # a format it can write in full
    except ValueError as exc:           # OutputPathError too
        raise UsageError(str(exc) if isinstance(exc, OutputPathError) else f"--save {exc}")
    # With --stats-json - the statistics are the only thing on standard output.
    terminal = sys.stderr if args.stats_json == STDOUT else sys.stdout
    display = not args.headless and not args.list_topics   # listing topics shows nothing
    if display and not display_available():
        print("convcrf-run: no display (DISPLAY/WAYLAND_DISPLAY unset): running headless",
              file=sys.stderr)
        display = False

    try:
        backend = backend_name_for(args.model, args.backend)
    except ValueError as exc:
        raise UsageError(str(exc))
    mismatch = _model_backend_mismatch(args.model, backend)
    if mismatch:
        raise UsageError(mismatch)
    spec = backend_spec(backend)
    if spec.remote and args.model == "demo":
        raise UsageError(f"--backend {spec.name}: pass --model NAME, the model's name on the "
                         "server (convcrf-triton --name, default convcrf)")
    options = _backend_options(args, spec)

    is_bag = args.video.strip().startswith("bag:")
    if not is_bag and (args.topic or args.list_topics or args.rate is not None):
        raise UsageError("--topic, --list-topics and --rate apply to bag: sources "
                         "(--video bag:PATH)")
    if args.list_topics:
        from ..runtime.streams.ros import list_topics
        try:
            topics = list_topics(args.video.strip()[len("bag:"):])
        except SourceError as exc:
            raise UsageError(str(exc))
        for topic in topics:
            print(f"{topic.count:>8}  {topic.name}  {topic.msgtype}"
                  + ("" if topic.is_image else "  (not an image)"))
        return ExitCode.OK
    bag_inputs = [args.video.strip()[len("bag:"):]] if is_bag else []
    given = [flag for flag, value in (("--bag-storage", args.bag_storage),
                                      ("--bag-overlay", args.bag_overlay)) if value]
    if given and not args.save_bag:     # second new-user trial: silently ignored
        raise UsageError(f"{', '.join(given)} apply to --save-bag OUT only")
    try:  # refuse a bad output or address before anything is loaded
        if args.save_bag:
            from ..runtime.streams.ros import check_output_bag
            check_output_bag(args.save_bag, bag_inputs)
        if args.foxglove:
            from ..runtime.streams.foxglove import parse_address
            parse_address(args.foxglove)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc))
    model = args.model
    if backend == "torch":   # loaded here: --import, --allow-pickle and unary files
        with Progress(f"convcrf-run: loading {args.model}"):
            model = load_model_argument(args, args.model)
    elif unary_settings_given(args):
        raise UsageError(f"{', '.join(unary_settings_given(args))} apply to a unary saved "
                         "without class code on the torch backend; an exported model carries "
                         "its own CRF and metadata")
    try:
        source = open_source(args.video, demo_size=(args.size.height, args.size.width),
                             demo_seed=args.seed,
                             reconnect_attempts=args.reconnect,
                             stall_timeout_s=args.stall_timeout, topic=args.topic,
                             rate=args.rate)
    except SourceError as exc:
        raise UsageError(str(exc))
    try:
        with Progress(f"convcrf-run: loading {args.model}"):
            segmenter = Segmenter(model, backend, resize=args.resize, crf=not args.no_crf,
                                  return_confidence=bool(args.save_bag or args.foxglove),
                                  **options)
    except BackendUnavailableError:
        source.close()
        raise                      # status 3, with the pip command
    except InputSizeError as exc:  # e.g. a fixed-size model with --resize none: before the run
        source.close()
        raise UsageError(str(exc))
    except (FileNotFoundError, ValueError, TypeError, OSError) as exc:
        source.close()
        raise UsageError(f"cannot load model {args.model!r}: {exc}")
    except BaseException:
        source.close()
        raise

    try:
        sinks = _robotics_sinks(args, segmenter.metadata, getattr(source, "topic", None),
                                bag_inputs)
    except (OSError, ValueError, ImportError) as exc:
        source.close()
        segmenter.close()
        raise UsageError(str(exc))
    # Headless runs show how far they are on a terminal (a window has its HUD).
    bar = Progress(f"convcrf-run: {source.description}", args.max_frames,
                   enabled=False if display else None)

    def advance(frame, result) -> None:
        bar.advance(note="frames" if args.max_frames is None else "")

    def finish(report) -> None:
        """The summary and --stats-json, written while run_video defers further interrupts."""
        bar.close()
        described = segmenter.describe()
        report.info.update(model=str(args.model), backend=segmenter.backend.name,
                           threads=args.threads or described.get("threads")
                           or "default (all cores)",
                           crf=segmenter.crf, warm_start=bool(described.get("warm_start")),
                           resize=segmenter.resize, input_size=list(segmenter.input_size),
                           crf_executor=described["crf_executor"],
                           crf_executor_detail=described["crf_executor_detail"])
        print(report.summary_table(), file=terminal, flush=True)
        if args.stats_json:
            try:
                write_text_atomic(args.stats_json, json.dumps(report.to_dict(), indent=2) + "\n")
            except OSError as exc:       # an output like the others: fails alone, status 1
                report.output_errors.append(f"--stats-json {args.stats_json}: "
                                            f"{describe_error(exc)}")

    try:
        with bar:
            report = run_video(source, segmenter, display=display, save=args.save,
                               max_frames=args.max_frames, view=args.view, alpha=args.alpha,
                               fps=args.fps, hud=not args.no_hud, sinks=sinks,
                               on_frame=advance, on_end=finish)
    except Exception as exc:   # any library's error: one line (the traceback with --verbose)
        logging.getLogger(__name__).debug("the run failed", exc_info=True)
        raise CommandError(describe_error(exc, "the run failed")) from exc
    finally:
        segmenter.close()
    if report.interrupted:
        if report.output_errors:
            print(f"convcrf-run: {_outputs_failed(report)}", file=sys.stderr)
        return signal_exit_code(report.signal)
    if report.output_errors:   # a lost output outweighs a lost source: status 1
        if report.source_error:
            print(f"convcrf-run: source ended: {report.source_error}", file=sys.stderr)
        raise CommandError(_outputs_failed(report))
    if report.source_error:
        raise SourceLostError(report.source_error)
    return ExitCode.OK


def _outputs_failed(report) -> str:
    """One line: which outputs failed and that the rest completed."""
    return (f"{len(report.output_errors)} output(s) failed and were dropped: "
            + " | ".join(report.output_errors) + "; the run and the other outputs completed")


def _backend_options(args: argparse.Namespace, spec) -> dict:
    """The constructor options of ``spec``'s backend from the command line: the options its
    registry entry lists, those given; ``--warm-start`` only where the backend has it."""
    given = {"device": args.device, "threads": args.threads, "plugin_library": args.plugin,
             "providers": tuple(p.strip() for p in args.providers.split(",") if p.strip()),
             "url": args.url, "protocol": args.protocol, "timeout": args.request_timeout,
             "crf_executor": args.crf_executor}
    options = {name: given[name] for name in spec.options
               if given.get(name) is not None}
    if args.crf_executor and "crf_executor" not in spec.options:
        able = [name for name, other in BACKENDS.items() if "crf_executor" in other.options]
        raise UsageError(f"--crf-executor is not available on the {spec.name} backend (it runs "
                         f"the CRF {' or '.join(spec.crf_executors)}); it applies to: "
                         f"{', '.join(able)}")
    if args.warm_start:
        if not spec.warm_start:
            able = [name for name, other in BACKENDS.items() if other.warm_start]
            raise UsageError(f"--warm-start is not available on the {spec.name} backend (it "
                             f"changes the CRF's iterations per frame); it runs on: "
                             f"{', '.join(able)}")
        options.update(warm_start=True, warm_start_iterations=args.warm_start_iterations)
    return options


def _robotics_sinks(args: argparse.Namespace, metadata, input_topic: str | None,
                    bag_inputs: list[str]) -> list:
    """The ``--save-bag`` and ``--foxglove`` sinks; topics go under ``<input topic>/convcrf``."""
    prefix = f"{input_topic}/convcrf" if input_topic else "/convcrf"
    sinks: list = []
    try:
        if args.save_bag:
            from ..runtime.streams.ros import BagSink
            sinks.append(BagSink(args.save_bag, metadata, topic_prefix=prefix, inputs=bag_inputs,
                                 storage=args.bag_storage or "mcap",
                                 overlay_format=args.bag_overlay or "jpeg",
                                 alpha=args.alpha))
        if args.foxglove:
            from ..runtime.streams.foxglove import FoxgloveSink, parse_address
            host, port = parse_address(args.foxglove)
            sinks.append(FoxgloveSink(metadata, host, port, topic_prefix=prefix,
                                      alpha=args.alpha))
            print(f"convcrf-run: Foxglove: open {sinks[-1].url}", file=sys.stderr)
    except BaseException:
        for sink in sinks:
            sink.close(completed=False)
        raise
    return sinks


if __name__ == "__main__":
    sys.exit(main())
