"""Metrics of predictions files (HitRate@1, ValidRatio, HR/NDCG/MRR@K): a thin entry point over llmrec.eval.report.

    python evaluate.py --predictions runs/tmf_smollm2_shop/predictions-test-hard.jsonl --out runs/eval
"""

from llmrec.eval.report import main

if __name__ == "__main__":
    raise SystemExit(main())
