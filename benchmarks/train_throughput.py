"""Training throughput of an SR network: samples/s, model TFLOP/s and MFU, for several precisions and
memory layouts, on synthetic batches (the data pipeline is not measured: it is far faster than the GPU).

Each variant times ``--steps`` optimizer steps (AdamW, masked L1, gradient clipping; after ``--warmup``
untimed steps) of the network and patch size of a training config::

    python benchmarks/train_throughput.py                       # train/configs/sr.yaml, GPU if present
    python benchmarks/train_throughput.py --config train/configs/sr_smoke.yaml --device cpu
    python benchmarks/train_throughput.py --variants fp32,bf16,bf16+cl,bf16+cl+compile --batch-size 8

A variant is ``fp32`` or ``bf16``, plus ``+cl`` (channels-last-3d) and/or ``+compile`` (``torch.compile``).
Prints one JSON line per variant and, with ``--out``, writes them all to a JSON file.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ctsr_models.inference import DEVICES, pick_device
from ctsr_models.nets import build_net
from ctsr_models.training import TrainerConfig, load_config
from ctsr_models.training.optim import autocast, make_optimizer
from ctsr_models.training.tasks.sr import SRConfig
from ctsr_models.training.throughput import flops_per_sample, throughput_report

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("train_throughput")


def _batch(size: int, patch: tuple[int, int, int], device: torch.device,
           channels_last: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(size, 1, *patch, generator=gen)
    batch = {"input": x, "target": x + 0.05 * torch.randn(x.shape, generator=gen),
             "mask": torch.ones(size, 1, patch[0], 1, 1), "ratios": torch.full((size, 2), 4.0)}
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    return {k: (v.to(device).contiguous(memory_format=fmt) if v.ndim == 5 else v.to(device)) for k, v in batch.items()}


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], device: torch.device,
          dtype: torch.dtype | None) -> None:
    with autocast(device, dtype):
        pred = model(batch["input"], batch["ratios"])
        loss = ((pred.float() - batch["target"]).abs() * batch["mask"]).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(cfg: SRConfig, variant: str, device: torch.device, batch_size: int, steps: int,
            warmup: int) -> dict[str, Any]:
    """Time one variant; returns samples/s, FLOPs per sample, achieved TFLOP/s and MFU (GPU)."""
    parts = set(variant.split("+"))
    dtype = torch.bfloat16 if "bf16" in parts else None
    channels_last, compiled = "cl" in parts, "compile" in parts
    torch.manual_seed(0)
    net = build_net(cfg.model.name, **cfg.model.kwargs).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    batch = _batch(batch_size, cfg.data.patch_size, device, channels_last)
    flops = flops_per_sample(net, (batch["input"][:1], batch["ratios"][:1]))
    model = torch.compile(net) if compiled else net
    opt = make_optimizer(net, TrainerConfig(lr=1e-4))
    for _ in range(warmup):
        _step(model, opt, batch, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, batch, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = steps * batch_size / (time.perf_counter() - t0)
    out = {"variant": variant, "net": cfg.model.name, "patch": list(cfg.data.patch_size), "batch_size": batch_size,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "samples_per_s": rate, **throughput_report(flops, rate, 1, device)}
    if device.type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "train" / "configs" / "sr.yaml"),
                   help="training config (network, patch size, batch size)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--variants", help="comma-separated (default: all on GPU, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, help="default: the config's trainer.batch_size")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", help="write the results to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. data.patch_size=[32,64,64]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = load_config(SRConfig, args.config, args.overrides)
    device = pick_device(args.device)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    default = "fp32,bf16,bf16+cl,bf16+cl+compile" if use_cuda else "fp32"
    results = []
    for variant in (args.variants or default).split(","):
        result = measure(cfg, variant.strip(), device, args.batch_size or cfg.trainer.batch_size, args.steps,
                         args.warmup)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
