"""Golden-vector parity of the full ``msam`` model on an accelerator (or the CPU), fp32 and bf16 autocast.

Usage:  python benchmarks/cuda_parity.py [--device cuda] [--json out.json]

The CPU test suite (tests/test_parity_golden.py) proves parity on the CPU; this script repeats the same
checks with the model and inputs on ``--device``: fp32 with TF32 off (must meet the golden README's
tolerances), fp32 with TF32 on (torch's CUDA default for convolutions) and bf16 autocast (reported; the
mask agreement is what matters for a user). Exit code 1 when an fp32 / TF32-off check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
from pathlib import Path

import torch

from napari_msam.model import zscore_positive
from napari_msam.model.testing import golden_model, golden_volume

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden"
# the fp32 tolerances of tests/test_parity_golden.py
TOL = {"encoder": 1e-4, "adapter": 1e-4, "decoder_low": 1e-4, "decoder_iou": 1e-4, "refine": 2e-4}


def _load(name: str) -> dict:
    return torch.load(GOLDEN / f"{name}.pt", map_location="cpu", weights_only=True)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().to(torch.float64) - b.to(torch.float64)).abs().max().item()


def run(device: str, mode: str) -> dict:
    """One pass over the golden checks; ``mode``: fp32 (TF32 off), tf32, bf16 (autocast)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
    amp = (torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16) if mode == "bf16"
           else contextlib.nullcontext())
    model = golden_model("msam").to(device)
    enc_g, pe_g = _load("02_encoder"), _load("03_prompt_encoder")
    mea_g, dec_g, ref = _load("04_mea"), _load("05_decoder"), _load("06_refinement")
    x = zscore_positive(golden_volume())[None, None].to(device)
    out: dict = {"mode": mode}
    with torch.no_grad(), amp:
        e = model.encode(x)
        out["encoder"] = _err(e.float(), enc_g["enc_lora"])
        e_g = enc_g["enc_lora"].to(device)
        dense = pe_g["dense"].to(device)
        out["adapter"] = _err(model.adapter(e_g, dense).float(), mea_g["mea_out"])
        low, iou = model.mask_decoder(e_g, pe_g["dense_pe"].to(device), pe_g["sparse_pos"].to(device), dense,
                                      False, model.adapter)
        out["decoder_low"] = _err(low.float(), dec_g["low_res_logits"])
        out["decoder_iou"] = _err(iou.float(), dec_g["iou_pred"])
        prepared = model.prepare(e)
        low = None
        errs = []
        for it in range(3):
            low = model.refine(prepared, ref["clicks"][it: it + 1].to(device), ref["labels"][it: it + 1].to(device),
                               low)
            errs.append(_err(low[0].float(), ref["low_res_logits"][it]))
        out["refine"] = max(errs)
        up = model.upsample(low.float())[0, 0].cpu()
    gold = ((ref["final_mask_packbits"][:, None].to(torch.int64) >> torch.arange(7, -1, -1)) & 1)
    gold = gold.reshape(128, 128, 128).bool()
    mine = up > 0
    inter = int((mine & gold).sum())
    out["final_mask_dice"] = 2 * inter / max(1, int(mine.sum()) + int(gold.sum()))
    out["final_mask_mismatch_voxels"] = int((mine != gold).sum())
    if mode == "fp32":
        out["pass"] = all(out[k] < t for k, t in TOL.items())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", nargs="+", default=None, help="default: fp32 tf32 bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cuda_parity: CUDA is not available", file=sys.stderr)
        return 2
    modes = args.modes or (["fp32", "tf32", "bf16"] if args.device.startswith("cuda") else ["fp32"])
    info = {"device": args.device, "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor(),
            "tolerances_fp32": TOL}
    results = []
    for mode in modes:
        r = run(args.device, mode)
        results.append(r)
        print(json.dumps(r))
    report = {"info": info, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    ok = all(r.get("pass", True) for r in results)
    print("PASS" if ok else "FAIL", "(fp32 against the golden tolerances)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
