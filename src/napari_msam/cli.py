"""``napari-msam`` command line: segment / evaluate / train. Never imports Qt or napari.

Errors the user can fix print one line ``napari-msam: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "napari-msam"


class CLIError(Exception):
    """A user-facing command-line error (printed on one line, exit status 2)."""


def _parse_point(text: str) -> tuple[tuple[int, int, int], bool]:
    parts = [p.strip() for p in text.split(",")]
    positive = True
    if len(parts) == 4:
        sign = parts.pop()
        if sign not in ("+", "-", "1", "0", "pos", "neg"):
            raise argparse.ArgumentTypeError(f"point {text!r}: the 4th field must be + or -")
        positive = sign in ("+", "1", "pos")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"point {text!r}: expected I,J,K or I,J,K,+ / I,J,K,-")
    try:
        ijk = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r}: I,J,K must be integers") from None
    return ijk, positive  # type: ignore[return-value]


def _parse_series(text: str) -> str | int:
    """A bare number is an index into the folder's series; anything else (``1.2.840...``) is a UID."""
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("expected a SeriesInstanceUID or a series index")
    return int(text) if text.isdigit() else text


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="model weights (.safetensors of napari-msam, or a SAM-Med3D / M-SAM .pth); "
                        "default: the embedded default model")
    p.add_argument("--modality", choices=("auto", "ct", "mr", "other"), default="auto",
                   help="'ct' applies the model's CT window, 'mr' turns on edge refinement by default; 'auto': what "
                        "a DICOM series says, else the file name (CT, MR, T1, ...), else CT for Hounsfield-like values")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--max-zoom", type=float, default=None, metavar="Z",
                   help="widest ROI for large objects, as a multiple of the model's spacing (1: never zoom "
                        "out); default: what the checkpoint was trained with")
    from .session import MAX_TTA

    p.add_argument("--tta", type=int, default=1, choices=range(1, MAX_TTA + 1), metavar="K",
                   help="test-time flips: average K mirrored views of each ROI (1: off; K x slower; "
                        "docs/session.md says what it measured)")
    from .edge_refine import EDGE_MODES

    p.add_argument("--edge-refine", choices=EDGE_MODES, default="auto",
                   help="snap the model's mask to image edges after each click (a random walker seeded by "
                        "the model and the clicks); 'auto': MR only, where it helps (docs/session.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Interactive 3-D tumour segmentation with M-SAM.")
    sub = parser.add_subparsers(dest="command", metavar="{segment,evaluate,train}")

    seg = sub.add_parser("segment", help="segment one object from clicks, write the mask",
                         description="Clicks are voxel indices of the image array as nibabel loads it "
                                     "(the file's own axis order), applied in order as refinement clicks.")
    seg.add_argument("image", type=Path, help="NIfTI, TIFF, NRRD, MetaImage, or a DICOM folder / file")
    seg.add_argument("-o", "--output", type=Path, required=True, help="mask file (.nii.gz, .nii or .tif)")
    seg.add_argument("--point", action="append", type=_parse_point, required=True, metavar="I,J,K[,+|-]",
                     help="a click (repeatable); + positive (default), - negative")
    seg.add_argument("--channel", type=int, default=None, help="channel of a 4-D image")
    seg.add_argument("--series", type=_parse_series, default=None, metavar="UID_OR_INDEX",
                     help="DICOM folder with several series: the SeriesInstanceUID or the index "
                          "(0 = lowest series number)")
    seg.add_argument("--multi-click", action="store_true", help="feed all clicks at every step")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing output file (never the input)")
    _add_model_args(seg)

    ev = sub.add_parser("evaluate", help="simulated-click evaluation over a data folder",
                        description="DATA_DIR: imagesTr/+labelsTr/ (MSD), *_image*.nii.gz + *_mask.nii.gz, "
                                    "or X.nii.gz + X_label.nii.gz.")
    ev.add_argument("data_dir", type=Path)
    ev.add_argument("--csv", type=Path, required=True, help="per-click results (case,click,dice,iou,positive,seconds)")
    ev.add_argument("--clicks", type=int, default=10)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--strategy", choices=("random", "center"), default="random")
    ev.add_argument("--method", choices=("msam", "random-walker"), default="msam")
    ev.add_argument("--plot", type=Path, default=None, help="PNG of Dice vs clicks")
    ev.add_argument("--label", type=int, default=None, help="evaluate this label id (default: all labels > 0)")
    ev.add_argument("--limit", type=int, default=None, help="only the first N cases")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--overwrite", action="store_true", help="replace existing --csv / --plot files")
    _add_model_args(ev)

    tr = sub.add_parser("train", help="train a model (see napari_msam.training)")
    from .training.cli import add_train_arguments

    add_train_arguments(tr)
    return parser


def _load_model(args):
    from .session import pick_device

    device = pick_device(None if args.device == "auto" else args.device)
    if args.checkpoint is None:
        from .default_model import load_default_model

        return load_default_model(device)
    if not args.checkpoint.exists():
        raise CLIError(f"{args.checkpoint}: no such checkpoint")
    from .model import load_checkpoint

    return load_checkpoint(args.checkpoint, device=device)


def _make_session(args, loaded):
    from .session import Session

    return Session(loaded, device=None if args.device == "auto" else args.device, threads=args.threads,
                   multi_click=getattr(args, "multi_click", False), max_zoom=getattr(args, "max_zoom", None),
                   tta=getattr(args, "tta", 1), edge_refine=getattr(args, "edge_refine", "auto"))


def cmd_segment(args) -> int:
    import numpy as np

    from .io import MASK_SUFFIXES, check_output, check_segmentable, read_volume, volume_modality, write_mask

    check_output(args.output, inputs=[args.image], overwrite=args.overwrite, suffixes=MASK_SUFFIXES)
    vol = read_volume(args.image, channel=args.channel, series=args.series)
    check_segmentable(vol.data, args.image)
    clicks = [(vol.original_index_to_array(ijk), pos) for ijk, pos in args.point]
    if not clicks[0][1]:
        raise CLIError("the first --point must be positive (it defines the object)")
    loaded = _load_model(args)
    session = _make_session(args, loaded)
    modality = args.modality  # auto: what the file says (DICOM), else its name, else its intensities
    if modality == "auto":
        modality = volume_modality(vol, Path(args.image).name)
    session.set_image(vol.data, vol.spacing, modality)
    total = 0.0
    for voxel, pos in clicks:
        r = session.add_click(voxel, pos)
        total += r.timings["total"]
    mask = session.current_mask.astype(np.uint8)
    out_affine = vol.original_affine if vol.original_affine is not None else vol.affine
    write_mask(args.output, vol.to_original(mask), out_affine)
    print(f"{args.output}: {int(mask.sum())} voxels, {len(clicks)} click(s), {total:.2f} s, device {session.device}")
    return 0


def cmd_evaluate(args) -> int:
    from . import evaluation as ev
    from .io import check_output

    if args.clicks < 1:
        raise CLIError("--clicks must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    check_output(args.csv, inputs=[args.data_dir], overwrite=args.overwrite, suffixes=(".csv",))
    if args.plot is not None:
        check_output(args.plot, inputs=[args.data_dir, args.csv], overwrite=args.overwrite, suffixes=(".png",))
    cases = ev.find_cases(args.data_dir)
    if args.limit is not None:
        cases = cases[: args.limit]
    if args.method == "msam":
        session = _make_session(args, _load_model(args))
    else:
        from .baselines import RandomWalkerSession

        session = RandomWalkerSession()
    results = ev.evaluate_cases(cases, session, n_clicks=args.clicks, strategy=args.strategy, seed=args.seed,
                                modality=args.modality, label=args.label, progress=not args.no_progress)
    ev.write_csv(args.csv, results)
    s = ev.summary(results, args.clicks)
    print(ev.format_summary(s))
    if args.plot is not None:
        ev.plot_dice(args.plot, results, args.clicks, title=f"{args.method}, {args.strategy} clicks")
    print(f"wrote {args.csv}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def cmd_train(args) -> int:
    from .training.cli import run_train

    result = run_train(args)
    return int(result) if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-msam`` console script; returns the exit status."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads slow small machines
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import MSAMError
    from .model import CheckpointError

    known: tuple[type[BaseException], ...] = (CLIError, MSAMError, OSError, CheckpointError)
    try:
        handler = {"segment": cmd_segment, "evaluate": cmd_evaluate, "train": cmd_train}[args.command]
        return handler(args)
    except known as exc:
        msg = str(exc).strip().replace("\n", " ") or type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
