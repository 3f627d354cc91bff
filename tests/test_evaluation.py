"""The click protocol, dataset discovery, summaries and the random-walker baseline."""

import shutil

import nibabel as nib
import numpy as np
import pytest

from napari_msam.baselines import RandomWalkerSession
from napari_msam.errors import MSAMError
from napari_msam.evaluation import (
    evaluate_cases,
    find_cases,
    format_summary,
    load_case,
    plot_dice,
    results_csv,
    run_protocol,
    summary,
)
from napari_msam.io import read_volume
from napari_msam.session import Session


def test_protocol_perfect_stop_and_noc(threshold_loaded, blob_case):
    _, gt = blob_case
    s = Session(threshold_loaded, device="cpu")
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1, 1, 1))
    res = run_protocol(s, gt.astype(np.uint8), n_clicks=5, seed=0)
    assert res.stopped == "perfect" and len(res.records) == 1
    assert res.records[0].positive and gt[res.records[0].voxel]
    assert res.dice_curve() == [1.0] * 5 and res.nocs == {80: 1, 85: 1, 90: 1}


def test_protocol_real_tiny_model_is_seeded(tiny_loaded, sts_paths):
    img, lab = read_volume(sts_paths[0]), read_volume(sts_paths[1], is_label=True)
    s = Session(tiny_loaded, device="cpu")
    s.set_image(img.data, img.spacing, "mr")
    seen = []
    a = run_protocol(s, lab.data, n_clicks=3, strategy="random", seed=4, callback=lambda rec, r: seen.append(rec.click))
    b = run_protocol(s, lab.data, n_clicks=3, strategy="random", seed=4)
    assert seen == [1, 2, 3] and len(a.records) == 3
    assert [r.voxel for r in a.records] == [r.voxel for r in b.records]
    assert a.dices == b.dices and all(0.0 <= d <= 1.0 for d in a.dices)
    assert a.records[0].positive and lab.data[a.records[0].voxel] > 0
    assert all(r.seconds > 0 and "encode" in r.timings for r in a.records)
    c = run_protocol(s, lab.data, n_clicks=3, strategy="center", seed=0, callback=lambda rec, r: False)
    assert c.stopped == "cancelled" and len(c.records) == 1


def test_protocol_errors(threshold_loaded, blob_case):
    img, gt = blob_case
    s = Session(threshold_loaded, device="cpu")
    s.set_image(img, (1, 1, 1))
    with pytest.raises(MSAMError, match="label 7 is absent"):
        run_protocol(s, gt.astype(np.uint8), label=7)
    with pytest.raises(MSAMError, match="empty"):
        run_protocol(s, np.zeros_like(gt))
    with pytest.raises(MSAMError, match="does not match"):
        run_protocol(s, gt[10:30])
    with pytest.raises(MSAMError, match="strategy"):
        run_protocol(s, gt, strategy="worst")


def test_random_walker_baseline(blob_case):
    img, gt = blob_case
    rw = RandomWalkerSession(margin_mm=12, seed_mm=2, beta=130)
    rw.set_image(img, (1, 1, 1))
    res = run_protocol(rw, gt, n_clicks=3, seed=0)
    assert res.dice_curve()[-1] > 0.8
    assert rw.undo() is not None


def _pair_dir(tmp_path, sts_paths):
    d = tmp_path / "pairs"
    (d / "P1").mkdir(parents=True)
    shutil.copy(sts_paths[0], d / "P1" / "MR_T1_image.nii.gz")
    shutil.copy(sts_paths[1], d / "P1" / "MR_T1_mask.nii.gz")
    shutil.copy(sts_paths[0], d / "caseB.nii.gz")
    shutil.copy(sts_paths[1], d / "caseB_label.nii.gz")
    return d


def test_find_cases_layouts(tmp_path, sts_paths):
    d = _pair_dir(tmp_path, sts_paths)
    cases = find_cases(d)
    assert sorted(c.name for c in cases) == ["P1/MR_T1", "caseB"]
    msd = tmp_path / "msd"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    shutil.copy(sts_paths[0], msd / "imagesTr" / "sts_001_0000.nii.gz")
    shutil.copy(sts_paths[1], msd / "labelsTr" / "sts_001.nii.gz")
    [c] = find_cases(msd)
    assert c.name == "sts_001" and c.label.name == "sts_001.nii.gz"
    with pytest.raises(MSAMError, match="no image/label pairs"):
        find_cases(tmp_path / "msd" / "labelsTr")
    # a label on another grid is refused
    lab = nib.load(str(sts_paths[1]))
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj)[:-1], lab.affine), str(d / "caseB_label.nii.gz"))
    bad = [c for c in find_cases(d) if c.name == "caseB"][0]
    with pytest.raises(MSAMError, match="same grid"):
        load_case(bad)


def test_evaluate_summary_csv_plot(tmp_path, sts_paths, tiny_loaded):
    d = _pair_dir(tmp_path, sts_paths)
    cases = [c for c in find_cases(d) if c.name == "caseB"]
    s = Session(tiny_loaded, device="cpu")
    results = evaluate_cases(cases, s, n_clicks=2, modality="auto", progress=False)
    text = results_csv(results)
    lines = text.strip().splitlines()
    assert lines[0] == "case,click,dice,iou,positive,seconds" and len(lines) == 3
    summ = summary(results, 2)
    assert summ["cases"] == 1 and len(summ["mean_dice"]) == 2
    assert "NoC@85" in format_summary(summ)
    plot_dice(tmp_path / "p.png", results, 2)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
