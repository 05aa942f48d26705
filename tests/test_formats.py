"""NIfTI / NRRD / MHA reading and writing: geometry round trips, dtypes, atomicity, bad input."""
from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from conftest import shared
from ctsr_models.io import InputError, Volume, read_volume, write_volume
from ctsr_models.io.atomic import atomic_file
from ctsr_models.io.formats import to_output_dtype

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def oblique_volume(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    direction = Rotation.from_euler("xyz", [12.0, -7.0, 31.0], degrees=True).as_matrix()
    array = rng.normal(0, 300, size=(7, 9, 11)).astype(np.float32)
    array[0, 0, 0] = -1000.0
    return Volume(array, spacing=(0.7, 0.8, 2.5), origin=(-120.5, 33.25, 401.0), direction=direction.ravel(),
                  slice_thickness=3.0)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd", "v.mha"])
def test_round_trip_keeps_geometry_thickness_and_rounds_to_int16(tmp_path, name):
    vol = oblique_volume()
    write_volume(vol, tmp_path / name)
    back = read_volume(tmp_path / name)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    assert back.slice_thickness == pytest.approx(3.0)
    np.testing.assert_array_equal(back.array, np.rint(vol.array))
    assert sitk.ReadImage(str(tmp_path / name)).GetPixelID() == sitk.sitkInt16


def test_float32_output_keeps_values(tmp_path):
    vol = oblique_volume()
    write_volume(vol, tmp_path / "f.nrrd", dtype="float32")
    np.testing.assert_array_equal(read_volume(tmp_path / "f.nrrd").array, vol.array)


def test_nifti_geometry_agrees_with_nibabel(tmp_path):
    """Independent check: nibabel's RAS affine places every voxel where our LPS geometry does."""
    vol = oblique_volume()
    write_volume(vol, tmp_path / "v.nii.gz")
    affine = nib.load(str(tmp_path / "v.nii.gz")).affine
    ijk = np.array([[0, 0, 0], [10, 0, 0], [0, 8, 0], [0, 0, 6], [10, 8, 6]], dtype=float)
    ras = (affine[:3, :3] @ ijk.T).T + affine[:3, 3]
    np.testing.assert_allclose(ras @ LPS_TO_RAS, vol.index_to_physical(ijk), atol=1e-3)


def test_real_nrrd_matches_simpleitk():
    path = shared("ct/pyradiomics_lung1/lung1_image.nrrd")
    vol = read_volume(path)
    ref = sitk.ReadImage(str(path))
    assert vol.shape == (48, 512, 512)
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing())
    np.testing.assert_allclose(vol.origin, ref.GetOrigin())
    np.testing.assert_array_equal(vol.array, sitk.GetArrayViewFromImage(ref))


def test_int16_cast_rounds_and_clips():
    out = to_output_dtype(np.array([-40000.0, -1.5, 0.4, 2.5, 40000.0], dtype=np.float32), "int16")
    assert out.dtype == np.int16
    assert out.tolist() == [-32768, -2, 0, 2, 32767]
    with pytest.raises(ValueError, match="int16"):
        to_output_dtype(np.zeros(2), "uint8")


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.nii.gz"
    final.write_bytes(b"old result")
    with pytest.raises(RuntimeError):
        with atomic_file(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert final.read_bytes() == b"old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_input_is_never_modified(tmp_path):
    src = tmp_path / "in.nrrd"
    write_volume(oblique_volume(), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    vol = read_volume(src)
    vol.array += 5
    write_volume(vol, tmp_path / "out.nrrd")
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "input not found"),
        (lambda p: p.write_bytes(b"\x00garbage" * 50), "corrupt or not an image"),
        (lambda p: sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(p)), "not a 3D volume"),
        (lambda p: sitk.WriteImage(sitk.Image(8, 8, 1, sitk.sitkInt16), str(p)), "not a 3D volume"),
        (lambda p: sitk.WriteImage(sitk.Image(8, 8, 4, sitk.sitkUInt8) + 7, str(p)), "does not look like CT"),
        (lambda p: sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkVectorFloat32, 3), str(p)), "components"),
    ],
    ids=["missing", "corrupt", "2d", "one-slice", "not-hu", "vector"],
)
def test_bad_files_are_refused_with_a_readable_reason(tmp_path, make, message):
    path = tmp_path / "bad.nrrd"
    make(path)
    with pytest.raises(InputError, match=message):
        read_volume(path)


def test_a_truncated_gzip_volume_is_refused_not_zero_filled(tmp_path):
    path = tmp_path / "v.nii.gz"
    write_volume(oblique_volume(), path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match="truncated"):
        read_volume(path)


def test_unknown_file_type_and_output_format(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    with pytest.raises(InputError, match="not a supported input"):
        read_volume(txt)
    with pytest.raises(InputError, match="unknown output format"):
        write_volume(oblique_volume(), tmp_path / "out.xyz")
