"""The TMF model: any HF causal LM + PEFT LoRA, the fusion module and adaptors, slots filled by masked_scatter.

``lm.py`` loads the LM (hub, folder, GGUF), ``model.py`` is :class:`TMFModel`, ``prompts/`` renders the
easy / medium / hard prompts as text segments and slots, ``collator.py`` turns them into tensors and
``tasks.py`` says which parameter groups each task trains (TMF Eq. 9-11).
"""
