"""Can the rows of M³BSR's Table 2 be real HR/NDCG values? A check that survives the scrambled header.

    python bench/m3bsr_table2_check.py [--tolerance 1e-4] [--out bench/out/m3bsr_table2_check]

The extracted table (``../shared/papers/m3bsr.txt``, Table 2) gives each method eight numbers, HR@10,
NDCG@10, HR@20 and NDCG@20 on Rec-Tmall and on Kuaishou, but its column header is scrambled
("NDCG@10 HR@10 NDCG@10 HR@20 NDCG@20 HR@10 HR@20 NDCG@20") and some rows are visibly in another order than
others. So no column can be trusted; this script tries **every** assignment of a row's eight numbers to
the eight metrics (8! = 40,320) and keeps those that satisfy what any leave-one-out evaluation with one
target per user must satisfy (``r`` = the target's rank; each metric is a mean over users):

* ``NDCG@k <= HR@k`` (a hit scores at most 1) and ``NDCG@10 >= HR@10 / log2(11)`` (a hit within 10
  scores at least ``1/log2(11)`` = 0.289);
* ``HR@10 <= HR@20``;
* ``(HR@20 - HR@10) / log2(21) <= NDCG@20 - NDCG@10 <= (HR@20 - HR@10) / log2(12)`` (the users with
  ``11 <= r <= 20`` add between ``1/log2(21)`` and ``1/log2(12)`` each).

Each bound gets ``tolerance`` of slack for the printed 4-decimal rounding. A row with no admissible
assignment cannot be a table of real HR/NDCG values, whatever its column order. Writes
``<out>/m3bsr_table2_check.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

# Table 2 of the M³BSR paper, each method's eight numbers in the order the extraction prints them.
TABLE_2 = {
    "GRU4Rec": [0.1498, 0.0431, 0.2015, 0.0492, 0.0853, 0.0021, 0.1360, 0.0103],
    "SASRec": [0.1662, 0.0578, 0.2145, 0.0635, 0.1001, 0.0083, 0.1490, 0.0141],
    "BERT4Rec": [0.2123, 0.0964, 0.2629, 0.1078, 0.1435, 0.0494, 0.1958, 0.0549],
    "STOSA": [0.2568, 0.1370, 0.3080, 0.1420, 0.1930, 0.0908, 0.2420, 0.1135],
    "SSDRec": [0.2827, 0.1637, 0.3315, 0.1680, 0.2176, 0.1151, 0.2671, 0.1198],
    "MISSRec": [0.2179, 0.2786, 0.1601, 0.3322, 0.1623, 0.1120, 0.2654, 0.1186],
    "MMSBR": [0.3336, 0.1702, 0.2209, 0.2897, 0.1660, 0.1188, 0.2711, 0.1253],
    "MMMLP": [0.1789, 0.2769, 0.2928, 0.1753, 0.3421, 0.2284, 0.1285, 0.1332],
    "M3SRec": [0.2997, 0.1803, 0.3486, 0.1851, 0.2315, 0.1293, 0.2859, 0.1354],
    "CMCLRec": [0.3075, 0.3602, 0.1937, 0.2394, 0.1375, 0.2918, 0.1450, 0.1886],
    "NMTR": [0.3225, 0.1563, 0.2096, 0.2738, 0.1524, 0.1061, 0.2583, 0.1088],
    "DIPN": [0.2786, 0.1602, 0.3307, 0.1654, 0.2153, 0.1111, 0.2623, 0.1156],
    "SGDL": [0.2861, 0.1670, 0.3359, 0.1708, 0.2212, 0.1181, 0.2672, 0.1209],
    "MB-STR": [0.2931, 0.1741, 0.3447, 0.1795, 0.2290, 0.1282, 0.2794, 0.1344],
    "KMCLR": [0.3025, 0.1800, 0.3518, 0.1857, 0.2372, 0.1334, 0.2806, 0.1382],
    # EBM: the extraction prints 0.1395 at the end of KMCLR's row (nine numbers there, seven here)
    "EBM": [0.3083, 0.1877, 0.3601, 0.1953, 0.2420, 0.1395, 0.2882, 0.1423],
    "M3BSR (ours)": [0.2028, 0.3815, 0.2130, 0.2603, 0.3101, 0.1612, 0.3207, 0.1630],
}
METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def consistent(hr10: float, n10: float, hr20: float, n20: float, tol: float, strict: bool = True) -> bool:
    """Whether one dataset's four numbers can come from one-target leave-one-out ranking.

    ``strict=False`` checks the per-metric bounds only (``NDCG@k <= HR@k``, ``NDCG@10 >= HR@10/log2(11)``,
    ``NDCG@20 >= HR@20/log2(21)``, both monotone in ``k``); ``strict`` adds the bounds on ``NDCG@20 - NDCG@10``.
    """
    basic = (n10 <= hr10 + tol and n20 <= hr20 + tol and hr10 <= hr20 + tol and n10 <= n20 + tol
             and n10 >= hr10 / math.log2(11) - tol and n20 >= hr20 / math.log2(21) - tol)
    if not strict:
        return basic
    return basic and (hr20 - hr10) / math.log2(21) - 2 * tol <= n20 - n10 <= (hr20 - hr10) / math.log2(12) + 2 * tol


def admissible(values: list[float], tol: float, strict: bool = True) -> list[dict[str, dict[str, float]]]:
    """Every distinct assignment of the eight values to (Rec-Tmall, Kuaishou) x METRICS that is consistent."""
    found, seen = [], set()
    for order in itertools.permutations(values):
        if order in seen:
            continue
        seen.add(order)
        tmall, kuaishou = order[:4], order[4:]
        if consistent(*tmall, tol, strict) and consistent(*kuaishou, tol, strict):
            found.append({"Rec-Tmall": dict(zip(METRICS, tmall, strict=True)),
                          "Kuaishou": dict(zip(METRICS, kuaishou, strict=True))})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tolerance", type=float, default=1e-4, help="slack per bound for 4-decimal rounding")
    parser.add_argument("--out", type=Path, default=Path("bench/out/m3bsr_table2_check"))
    args = parser.parse_args()
    report = {}
    lines = [("| method | admissible assignments, per-metric bounds | admissible, + NDCG@20 - NDCG@10 bounds | "
             "printed order passes per-metric / all |"), "|---|---|---|---|"]
    for method, values in TABLE_2.items():
        loose, strict = admissible(values, args.tolerance, strict=False), admissible(values, args.tolerance)
        printed = [consistent(*values[:4], args.tolerance, s) and consistent(*values[4:], args.tolerance, s)
                   for s in (False, True)]
        report[method] = {"values": values, "n_admissible_per_metric_bounds": len(loose),
                          "n_admissible_all_bounds": len(strict), "printed_order_per_metric_bounds": printed[0],
                          "printed_order_all_bounds": printed[1], "example_per_metric": loose[0] if loose else None}
        lines.append(f"| {method} | {len(loose)} | {len(strict)} | {'yes' if printed[0] else 'no'} / "
                     f"{'yes' if printed[1] else 'no'} |")
    impossible = [m for m, r in report.items() if r["n_admissible_all_bounds"] == 0]
    impossible_loose = [m for m, r in report.items() if r["n_admissible_per_metric_bounds"] == 0]
    summary = (f"Tolerance {args.tolerance} per bound. No assignment passes the per-metric bounds: "
               f"{len(impossible_loose)} of {len(report)} rows ({', '.join(impossible_loose) or 'none'}). "
               f"No assignment passes all bounds: {len(impossible)} of {len(report)} rows "
               f"({', '.join(impossible) or 'none'}).")
    lines += ["", summary, "", "'printed order': Rec-Tmall HR@10, NDCG@10, HR@20, NDCG@20, then Kuaishou the same."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "m3bsr_table2_check.json").write_text(json.dumps({"tolerance": args.tolerance, "rows": report,
                                                                  "impossible_all_bounds": impossible,
                                                                  "impossible_per_metric_bounds": impossible_loose},
                                                                 indent=2))
    (args.out / "m3bsr_table2_check.md").write_text(text)


if __name__ == "__main__":
    main()
