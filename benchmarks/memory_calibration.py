"""How good is the memory estimate? Calibrate as a replica does, then measure other shapes.

Loads the model (tiny on CPU by default), fits the memory model from the load-time probes, then runs
one-step calls at other sizes and counts and prints estimated vs measured peak memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHAPES = ((64, 64, 4), (128, 128, 4), (192, 192, 2), (256, 256, 1), (320, 320, 1), (256, 256, 2))


def main(args: Any) -> int:
    import torch

    from models.generator import load_generator
    from models.loader import ModelSpec, resolve_device
    from models.memory import PeakMemory, measure_probes
    from models.request import GenerationRequest
    from scheduler.memory import MemoryModel

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    generator = load_generator(ModelSpec(model=args.model, device=device))
    probes = measure_probes(device, generator.generate)
    model = MemoryModel.fit(probes, budget_bytes=float("inf"))
    rows = []
    for width, height, images in SHAPES:
        request = GenerationRequest("calibration", width, height, 1, 7.5, seed=0, n=images)
        generator.generate([request])
        with PeakMemory(device) as peak:
            generator.generate([request])
        estimate = model.estimate(width, height, images)
        rows.append({"shape": f"{images} x {width}x{height}", "estimated_mib": estimate / 2**20,
                     "measured_mib": peak.peak_bytes / 2**20,
                     "ratio": estimate / peak.peak_bytes if peak.peak_bytes else None})
    table = ["| shape | estimated MiB | measured MiB | estimate / measured |", "|---|---|---|---|"]
    table += [f"| {r['shape']} | {r['estimated_mib']:.1f} | {r['measured_mib']:.1f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    print(f"model {args.model} on {device}; fitted: {model}")
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "device": device,
                               "probes": [p.__dict__ for p in probes], "fit": model.__dict__,
                               "rows": rows}, indent=2, default=str))
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    return 0
