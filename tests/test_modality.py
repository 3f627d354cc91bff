"""The one modality rule: declaration, then name, then intensities, then MR."""

import numpy as np

from napari_msam import modality
from napari_msam.training.data import guess_modality as case_kind

CT_LIKE = np.full((8, 8, 8), -1000.0, np.float32)
CT_LIKE[2:6, 2:6, 2:6] = 40.0
ZSCORED = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)


def test_declaration_beats_name_and_intensities():
    g = modality.guess("MR_T1", CT_LIKE, declared="PT")
    assert (g.kind, g.modality, g.source) == ("pet", "other", "declared")
    assert modality.guess("scan", ZSCORED, declared="CT").modality == "ct"


def test_name_then_intensities_then_mr():
    assert modality.guess("BraTS_001_flair", CT_LIKE).kind == "mr"
    assert modality.guess("STS_003_CT_image").kind == "ct"
    assert modality.guess("ct2", ZSCORED).kind == "ct"
    g = modality.guess("BraTS_001_0000", CT_LIKE)
    assert (g.kind, g.source) == ("ct", "intensities")
    g = modality.guess("BraTS_001_0000", ZSCORED)  # a z-scored FLAIR with no telling name
    assert (g.kind, g.source) == ("mr", "default")
    assert "guessed" in g.describe() and g.describe().startswith("MR")


def test_pet_is_other_for_the_model_but_pet_for_training():
    assert modality.guess_modality("STS_005_PET_image", ZSCORED) == "other"
    assert case_kind("STS_005_PET_image.nii.gz") == "pet"
    assert case_kind("STS_005_MR_T1_image.nii.gz") == "mr"
    assert case_kind("patient_7_CT.nii.gz") == "ct"


def test_patient_abbreviations_are_not_pet():
    assert modality.guess("PT_01_scan", ZSCORED).kind == "mr"


def test_a_name_alone_cannot_rule_ct_out():
    g = modality.guess("case_001")
    assert (g.kind, g.source) == ("other", "unknown")
    assert case_kind("a.nii.gz") == "other"
