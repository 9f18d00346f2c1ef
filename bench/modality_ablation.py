"""Which modality does a trained TMF row use? Each item modality masked out of the fusion at inference (issue 11).

    python bench/modality_ablation.py [--recipe configs/ablations/no_curriculum_shop.yaml] [--n-users N]
        [--out docs/results/shop]

The row's last checkpoint ranks the same test users and frozen 10-candidate sets (its recipe's evaluation task)
four times: with every modality, and with image, text or graph masked out of every item's fusion input
(``llmrec infer drop_modalities=[...]``; the fusion then treats that modality as absent, as ML-100k's missing
images; behavior slots keep their graph embeddings). The model is not retrained: this measures what the trained
model relies on, not what a model trained without the modality would reach. Paired differences (variant minus
all modalities) of HR@1 on the same users, with the paired-bootstrap interval and sign-flip p-value.

Writes ``modality_ablation.json`` (per-user ranks), ``.md`` and ``.png`` into ``--out``; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from llm_experiment import finished_checkpoint, ranks_of  # bench/ is on sys.path when a script there runs
from matplotlib.figure import Figure

from llmrec.config import load_config
from llmrec.eval.infer import InferConfig, run_inference
from llmrec.metrics import bootstrap_interval, paired_comparison
from llmrec.pipeline.stages import ensure_inputs
from llmrec.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.modality_ablation")
VARIANTS = {"all modalities": [], "image off": ["image"], "text off": ["text"], "graph off": ["graph"]}
N_BOOT = 2000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="configs/ablations/no_curriculum_shop.yaml")
    parser.add_argument("--n-users", type=int, default=None, help="a seeded subset of test users (default: all)")
    parser.add_argument("--out", default="bench/out/modality_ablation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    checkpoint = finished_checkpoint(args.recipe)
    if checkpoint is None:
        parser.error(f"{args.recipe}: no finished run (train it first: python train.py --config {args.recipe})")
    out = ROOT / args.out
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dataset, tables = ensure_inputs(load_train_config(ROOT / args.recipe))
    absent = [name for name in ("image", "text", "graph") if getattr(tables, name) is None]
    per_user, rows_out = {}, {}
    for name, dropped in VARIANTS.items():
        if set(dropped) & set(absent):
            continue  # nothing to switch off
        path = out / "predictions" / f"{Path(args.recipe).stem}-{name.replace(' ', '_')}.jsonl"
        meta = path.with_name(path.name + ".meta.json")
        if not (meta.is_file() and json.loads(meta.read_text())["checkpoint"] == str(checkpoint)):
            cfg = load_config(InferConfig, None, [
                f"checkpoint={checkpoint}", "mode=rank", "precision=auto", f"output={path}",
                f"n_users={'null' if args.n_users is None else args.n_users}",
                f"drop_modalities=[{','.join(dropped)}]"])
            run_inference(cfg, dataset, tables)
        rows = np.array(sorted(json.loads(line)["row"] for line in path.read_text().splitlines()))
        ranks = ranks_of(path, rows)
        per_user[name] = (ranks == 1).astype(float)
        rows_out[name] = {"dropped": dropped, "HR@1": float(per_user[name].mean()),
                          "HR@1_ci95": list(bootstrap_interval(per_user[name], N_BOOT)),
                          "HR@3": float((ranks <= 3).mean()), "target_ranks": ranks.tolist()}
    paired = [{"a": "all modalities", "b": name,
               **paired_comparison(per_user["all modalities"], per_user[name], N_BOOT)}
              for name in per_user if name != "all modalities"]
    results = {"recipe": args.recipe, "checkpoint": str(checkpoint), "absent_modalities": absent,
               "n_users": len(next(iter(per_user.values()))), "rows": rows_out, "paired": paired,
               "cpu": platform.processor() or platform.machine(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "seconds": time.perf_counter() - started}
    (out / "modality_ablation.json").write_text(json.dumps(results, indent=1).replace(str(ROOT) + "/", "") + "\n")
    lines = [(f"Modalities masked out at inference, `{args.recipe}` ({checkpoint.name}), {results['n_users']} test "
              "users x 10 frozen candidates, ranking by answer log-likelihood; not retrained."), "",
             "| variant | HR@1 | 95% CI | HR@3 | paired vs all (b - a) | 95% CI | p |", "|---|---|---|---|---|---|---|"]
    by_name = {p["b"]: p for p in paired}
    for name, row in rows_out.items():
        p = by_name.get(name)
        diff = (f"{p['difference']:+.3f} | [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] | {p['p_value']:.4f}"
                if p else "— | — | —")
        lines.append(f"| {name} | {row['HR@1']:.3f} | [{row['HR@1_ci95'][0]:.3f}, {row['HR@1_ci95'][1]:.3f}] | "
                     f"{row['HR@3']:.3f} | {diff} |")
    table = "\n".join(lines) + "\n"
    (out / "modality_ablation.md").write_text(table)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    names = list(rows_out)
    means = [rows_out[n]["HR@1"] for n in names]
    err = [[m - rows_out[n]["HR@1_ci95"][0] for m, n in zip(means, names, strict=True)],
           [rows_out[n]["HR@1_ci95"][1] - m for m, n in zip(means, names, strict=True)]]
    ax.bar(names, means, yerr=err, capsize=3)
    ax.axhline(0.1, color="grey", linestyle=":", label="chance (1 of 10)")
    ax.set_ylabel("test HR@1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "modality_ablation.png", dpi=120)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
