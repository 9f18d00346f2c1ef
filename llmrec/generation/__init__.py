"""Generation and scoring backends: HF generate, vLLM, candidate ranking (see DESIGN.md)."""
