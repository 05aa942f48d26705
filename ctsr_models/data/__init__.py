"""Training data: volume sources decoded once into a cache, patch sampling, and SR pairs simulated on
the fly with :mod:`ctsr_models.physics` (through-plane along z, in-plane self-supervision along x/y), and
new patients for X-ray → CT pairs from anatomical augmentation (:mod:`.anatomy_augment`)."""
from __future__ import annotations

from .anatomy_augment import AnatomyAug, AnatomyDraw, AnatomyResult, augment_anatomy, augment_volume
from .cache import CachedVolume, VolumeCache, cache_key
from .intensity import HU_SCALE, hu_to_net, net_to_hu
from .pairs import (
    Degradation, DegradationRanges, SRPair, ThinGrid, fixed_degradation, interpolate_slabs, make_pair, resample_truth,
    truth_length,
)
from .patches import (
    PERMUTATIONS, SRTrainDataset, SRValDataset, StreamSampler, VolumeEntry, cut_patch, pair_to_tensors,
    z_range_of,
)
from .sources import AXES, VolumeRef, VolumeSource, find_volumes, matched_paths

__all__ = [
    "AXES", "AnatomyAug", "AnatomyDraw", "AnatomyResult", "augment_anatomy", "augment_volume", "HU_SCALE", "PERMUTATIONS", "CachedVolume", "Degradation", "DegradationRanges", "SRPair",
    "SRTrainDataset", "SRValDataset", "StreamSampler", "ThinGrid", "VolumeCache", "VolumeEntry", "VolumeRef",
    "VolumeSource",
    "cache_key", "cut_patch", "find_volumes", "fixed_degradation", "hu_to_net", "interpolate_slabs", "make_pair",
    "matched_paths", "net_to_hu", "pair_to_tensors", "resample_truth", "truth_length", "z_range_of",
]
