"""Predict for test users with a TMF checkpoint (or a zero-shot LLM): a thin entry point over
llmrec.pipeline.commands (infer_main).

    python infer.py --config configs/infer/shop.yaml [key=value ...]
    python infer.py checkpoint=runs/tmf_smollm2_shop mode=generate n_users=100
"""

from llmrec.pipeline.commands import infer_main as main

if __name__ == "__main__":
    raise SystemExit(main())
