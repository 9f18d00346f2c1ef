"""Fine-tune TMF (LoRA + fusion + adaptors with the curriculum): a thin entry point over
llmrec.pipeline.commands (train_main).

    accelerate launch train.py --config configs/tmf_smollm2_shop.yaml [key=value ...] [--resume auto]
    python train.py --config configs/tmf_smollm2_shop.yaml max_steps=10
"""

from llmrec.pipeline.commands import train_main as main

if __name__ == "__main__":
    raise SystemExit(main())
