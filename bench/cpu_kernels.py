"""Does an item table depend on the CPU's kernels? Encode it under several kernel limits and compare.

    LLMREC_DATA_DIR=../shared/data python bench/cpu_kernels.py [--config configs/encode/ml100k_text.yaml] \
        [--out bench/out/cpu_kernels]

torch, MKL and oneDNN pick their kernels by the CPU's instruction set, so the same fp32 encoder gives
slightly different floats on an AVX2 and an AVX512 machine, and a graph encoder that reads the table
(DreamRec, MDSRec, M3BSR, BivRec) then trains along a different trajectory. Each setting below runs
``llmrec encode --config <config> cache_dir=<tables>/<setting>`` in its own process with:

* ``native``: nothing set (the machine's best kernels);
* ``aten_avx2``: ``ATEN_CPU_CAPABILITY=avx2`` only (torch's own kernels limited to AVX2);
* ``avx2``: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`` (every library
  limited to AVX2: on an AVX512 machine, what an AVX2-only machine computes).

Reported for every pair: identical or not, the largest absolute difference and how many rows differ.
Writes ``<out>/cpu_kernels.json`` and ``cpu_kernels.md``; the tables stay under ``--tables`` (default
``bench/out/cpu_kernels/tables``, not committed: they are derived from the dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmrec.devices import KERNEL_VARIABLES, describe_machine
from llmrec.tables import load_table

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
assert set(AVX2_ONLY) == set(KERNEL_VARIABLES)
SETTINGS = {"native": {}, "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"}, "avx2": AVX2_ONLY}


def setting_env(base: dict[str, str], setting: dict[str, str]) -> dict[str, str]:
    """``base`` without any kernel variable of its own, plus ``setting``'s (so ``native`` really is native)."""
    return {**{k: v for k, v in base.items() if k not in KERNEL_VARIABLES}, **setting}


def compare_tables(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Identical?, the largest absolute difference and the rows that differ, of two ``[rows, d]`` tables."""
    if a.shape != b.shape:
        raise ValueError(f"tables of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    differ = (a != b).any(dim=1)
    return {"identical": not bool(differ.any()), "max_abs_diff": float((a - b).abs().max()) if a.numel() else 0.0,
            "rows_differing": int(differ.sum()), "rows": int(a.shape[0])}


def encode(config: str, setting: str, tables: Path) -> torch.Tensor:
    """Run ``llmrec encode`` under ``setting``'s variables; the ``item`` table it wrote."""
    cache = tables / setting
    command = [str(Path(sys.executable).with_name("llmrec")), "encode", "--config", config, f"cache_dir={cache}",
               "progress=false"]
    subprocess.run(command, check=True, env=setting_env(dict(os.environ), SETTINGS[setting]), cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    tables = sorted(cache.glob("*.safetensors"))
    if len(tables) != 1:
        raise SystemExit(f"{cache}: expected one table, found {[t.name for t in tables]}")
    return load_table(tables[0]).item


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/encode/ml100k_text.yaml", help="an encode config")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "cpu_kernels")
    parser.add_argument("--tables", type=Path, default=ROOT / "bench" / "out" / "cpu_kernels" / "tables",
                        help="where the encoded tables go (one cache folder per setting)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tables = {name: encode(args.config, name, args.tables) for name in SETTINGS}
    pairs = [{"a": a, "b": b, **compare_tables(tables[a], tables[b])} for a, b in combinations(SETTINGS, 2)]
    report = {"command": "python bench/cpu_kernels.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": describe_machine(), "settings": SETTINGS, "pairs": pairs}
    lines = [f"Command: `{report['command']}`", "", f"Machine: {report['machine']}", "",
             "| table A | table B | identical | max abs difference | rows differing |", "|---|---|---|---:|---:|"]
    lines += [(f"| {p['a']} | {p['b']} | {p['identical']} | {p['max_abs_diff']:.3g} | "
               f"{p['rows_differing']} of {p['rows']} |")
              for p in pairs]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "cpu_kernels.json").write_text(json.dumps(report, indent=2))
    (args.out / "cpu_kernels.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
