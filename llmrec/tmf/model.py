"""TMFModel: a causal LM with PEFT LoRA, the modality fusion and the two MLP adaptors (TMF section 4).

One forward pass:

1. ``inputs_embeds`` = the LM's own embeddings of ``input_ids`` (the vocabulary is never resized;
   slot positions hold an ordinary placeholder token).
2. Item slots ``[MT_i]``: the rows of ``slot_items`` in the image / text / graph tables go through
   :class:`adapters.fusion.ModalityFusion` (AMSA Eq. 5-6, CMA Eq. 7-8) over the items of each prompt,
   then the item adaptor Psi_i (a two-layer MLP, section 4.2).
3. Behavior slots ``[MT_b]``: the graph encoder's behavior embeddings (Eq. 4) of ``slot_behaviors``
   go through the behavior adaptor Psi_b.
4. Both are written into ``inputs_embeds`` with one ``masked_scatter`` each (vectorized; the slot counts
   are checked row by row).
5. The LM runs on ``inputs_embeds``; the LM head is applied only at the positions whose next token has a
   label (``labels != -100``, shifted by one), never over the whole sequence.

Gradient routing (Eq. 9-11, :data:`llmrec.tmf.tasks.TRAINABLE_BY_TASK`): LoRA always trains; a row of
task ``medium`` trains the behavior adaptor, a row of task ``hard`` also the fusion and the item adaptor.
A module outside a row's task passes that row a detached output, so it gets no gradient from it even
when the prompt happens to contain its slots (:func:`_call`; the same under DeepSpeed ZeRO-3).

Loss: the token-mean negative log-likelihood of the answer tokens (Eq. 9-11 sum log-probabilities over
the answer tokens of a sample; averaging over the batch's tokens, as LLaRA and transformers do, only
rescales the learning rate).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from peft import (
    LoraConfig,
    get_peft_model,
    get_peft_model_state_dict,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import ModelOutput

from adapters.fusion import FusionConfig, ModalityFusion, item_attention_mask
from adapters.projectors import MLPAdaptor, embedding_rms
from llmrec.config import ConfigError, load_config, to_dict
from llmrec.tables import EmbeddingTable
from llmrec.tmf.fused_lora import fuse_lora_linears
from llmrec.tmf.lm import LMConfig, load_lm
from llmrec.tmf.tasks import TRAINABLE_BY_TASK

logger = logging.getLogger(__name__)

ADAPTORS_FILE = "adaptors.safetensors"
MODEL_CONFIG_FILE = "tmf_model.yaml"
ADAPTOR_GROUPS = ("fusion", "item_adaptor", "behavior_adaptor")
MODALITIES = ("image", "text", "graph")  # the column order of modality_mask_table
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRASettings:
    """PEFT LoRA of the LLM (Phi_LLM). Defaults are LLaRA's code (TMF follows LLaRA [31] and states none)."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))
    """Module names to adapt; LLaRA adapts all seven linear layers of each Llama block."""
    fused: bool = True
    """Run the LoRA layers with :class:`llmrec.tmf.fused_lora.FusedLoraLinear` (the same function with less
    elementwise work: 1.14x faster training steps on a CPU); false keeps PEFT's forward."""
    keep_cast_weights: bool = True
    """With ``fused`` and autocast to a dtype other than the base weights' (bf16 autocast over fp32 weights, the CPU
    recipes): cast each frozen base weight once and keep the copy, instead of casting it in every forward pass.
    The peak memory of a training step is unchanged (each pass keeps its casts for the backward pass anyway);
    between steps the copies stay (half the fp32 weights' bytes), and in inference (no backward pass) they add
    that much to the peak. False casts in every pass, as PEFT does."""

    def validate(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ConfigError(f"lora.r must be >= 1 and lora.alpha > 0, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")


@dataclass
class ModelConfig:
    """Everything that defines a TMFModel's architecture (saved with every checkpoint)."""

    lm: LMConfig = field(default_factory=LMConfig)
    lora: LoRASettings = field(default_factory=LoRASettings)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    adaptor_hidden_dim: int | None = None
    """Hidden width of both MLP adaptors; default the LLM's hidden size (as LLaRA's projector)."""
    adaptor_dropout: float = 0.0
    match_token_scale: bool = False
    """End each adaptor with an RMSNorm whose gain starts at the RMS of the LLM's token embeddings
    (not in the paper, which uses a plain MLP; helps small LLMs whose embeddings are far from unit scale)."""
    masked_modalities: list[str] = field(default_factory=list)
    """Item modalities (``image``, ``text``, ``graph``) masked out of the fusion in training and at inference: an
    ablation row trained without them (issue 11); ``graph`` masks the item-level graph embedding only, behavior
    slots keep the graph encoder's behavior embeddings. Empty (default): every modality the tables have."""

    def validate(self) -> None:
        unknown = sorted(set(self.masked_modalities) - set(MODALITIES))
        if unknown or len(set(self.masked_modalities)) != len(self.masked_modalities):
            raise ConfigError(f"masked_modalities {self.masked_modalities}: each of {list(MODALITIES)} at most once")
        if len(self.masked_modalities) == len(MODALITIES):
            raise ConfigError("masked_modalities: at least one modality must stay (got all three)")
        if self.adaptor_hidden_dim is not None and self.adaptor_hidden_dim < 1:
            raise ConfigError(f"adaptor_hidden_dim must be positive or null, got {self.adaptor_hidden_dim}")
        if not 0.0 <= self.adaptor_dropout < 1.0:
            raise ConfigError(f"adaptor_dropout must be in [0, 1), got {self.adaptor_dropout}")


@dataclass
class ModalityTables:
    """The per-item embedding tables TMF fuses; ``graph`` also carries the behavior embeddings (Eq. 4).

    An absent modality (``None``, e.g. images for ML-100k) becomes zero rows with the modality mask False.
    """

    text: EmbeddingTable | None = None
    image: EmbeddingTable | None = None
    graph: EmbeddingTable | None = None

    def present(self) -> dict[str, EmbeddingTable]:
        return {name: table for name, table in (("image", self.image), ("text", self.text), ("graph", self.graph))
                if table is not None}

    @property
    def n_items(self) -> int:
        sizes = {name: table.n_items for name, table in self.present().items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"ModalityTables: tables disagree on the number of items: {sizes}")
        return next(iter(sizes.values()), 0)

    def dims(self) -> dict[str, int]:
        """Width per modality; an absent one takes the width of a present one (the fusion needs >= 1)."""
        present = {name: table.dim for name, table in self.present().items()}
        fallback = present.get("text") or present.get("image") or present.get("graph") or 1
        return {name: present.get(name, fallback) for name in ("image", "text", "graph")}

    def description(self) -> dict[str, Any]:
        """Shapes and producers, saved with a checkpoint to catch a mismatched reload."""
        described = {name: {"shape": list(table.item.shape), "model": table.metadata.get("model"),
                            "dataset_fingerprint": table.metadata.get("dataset_fingerprint")}
                     for name, table in self.present().items()}
        if self.graph is not None and "behavior_source" in self.graph.metadata:  # a recipe's behavior_config
            described["graph"]["behavior_source"] = self.graph.metadata["behavior_source"]
        return described


@dataclass
class TMFOutput(ModelOutput):
    """A ``ModelOutput`` (a dict), so DeepSpeed ZeRO-3's hooks find the tensors in it."""

    loss: torch.Tensor | None = None
    """Token-mean NLL of the answer tokens."""
    n_label_tokens: int | None = None
    logits: torch.Tensor | None = None
    """``[K, vocab]`` logits at the K labelled positions only (``return_logits=True``)."""


def _call(module: nn.Module, trainable_rows: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with parameter gradient only from the batch rows in ``trainable_rows`` ([B] bool).

    One forward over every row; the rows outside ``trainable_rows`` take a detached copy of their output, so
    neither the module's parameters nor its inputs get gradient from those rows. Dropping their input
    gradient is exact here: the inputs are constant tables, or the fusion output, whose rows outside the item
    adaptor's task are outside the fusion's too (:func:`check_routing_is_nested`). This form runs on
    parameters DeepSpeed ZeRO-3 partitions (the earlier ``torch.func.functional_call`` with detached
    parameters met ZeRO-3's hooks with plain tensors and failed) and costs one forward, not two.
    """
    out = module(*args)
    n_trainable = int(trainable_rows.sum())
    if n_trainable == trainable_rows.numel():
        return out
    if n_trainable == 0:
        return out.detach()
    shape = (-1,) + (1,) * (out.dim() - 1)
    return torch.where(trainable_rows.view(shape), out, out.detach())


def check_routing_is_nested(trainable_by_task: Mapping[str, frozenset[str]] = TRAINABLE_BY_TASK) -> None:
    """:func:`_call` drops a frozen row's input gradient; that is exact only if every task that trains the
    fusion also trains the item adaptor it feeds (TMF Eq. 11 trains both; Eq. 9-10 neither)."""
    for task, parts in trainable_by_task.items():
        if "fusion" in parts and "item_adaptor" not in parts:
            raise ValueError(f"TRAINABLE_BY_TASK[{task!r}] trains the fusion but not the item adaptor; "
                             "llmrec.tmf.model._call would drop the fusion's gradient from those rows")


def _token_embedding_rms(causal_lm: nn.Module) -> float:
    embedding = causal_lm.get_input_embeddings()
    if hasattr(embedding.weight, "ds_id"):  # partitioned by DeepSpeed ZeRO-3: gather it for the statistic
        import deepspeed  # optional, present whenever ZeRO-3 partitioned the weights

        with deepspeed.zero.GatheredParameters([embedding.weight]):
            return embedding_rms(embedding)
    return embedding_rms(embedding)


class TMFModel(nn.Module):
    """HF causal LM + LoRA + fusion + adaptors; see the module docstring."""

    def __init__(self, cfg: ModelConfig, tables: ModalityTables | None = None, *, lm: nn.Module | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        check_routing_is_nested()
        self.cfg = cfg
        tables = tables or ModalityTables()
        if lm is None:
            lm, tokenizer = load_lm(cfg.lm)
        self.tokenizer = tokenizer
        for param in lm.parameters():
            param.requires_grad_(False)
        if cfg.lm.quantization != "none":
            lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=cfg.lm.gradient_checkpointing)
        lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                          lora_dropout=cfg.lora.dropout, target_modules=list(cfg.lora.target_modules))
        self.peft_model = get_peft_model(lm, lora)
        if cfg.lora.fused:
            logger.debug("fused LoRA forward on %d layers", fuse_lora_linears(self.peft_model,
                                                                             cfg.lora.keep_cast_weights))
        self.causal_lm = self.peft_model.get_base_model()
        if cfg.lm.gradient_checkpointing:
            self.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.vocab_size = int(self.causal_lm.get_input_embeddings().num_embeddings)  # ZeRO-3 partitions .weight
        hidden = int(self.causal_lm.config.hidden_size)

        self.table_description = tables.description()
        dims = tables.dims()
        self._register_tables(tables, dims)
        if cfg.masked_modalities:
            self._mask_modalities_for_training(cfg.masked_modalities)
        self.fusion = ModalityFusion(cfg.fusion, dims["image"], dims["text"], dims["graph"])
        scale = _token_embedding_rms(self.causal_lm) if cfg.match_token_scale else None
        self.item_adaptor = MLPAdaptor(self.fusion.fused_dim, hidden, cfg.adaptor_hidden_dim, cfg.adaptor_dropout,
                                       target_rms=scale)
        behavior_dim = int(self.behavior_table.shape[1]) if self.behavior_table.numel() else dims["graph"]
        self.behavior_adaptor = MLPAdaptor(behavior_dim, hidden, cfg.adaptor_hidden_dim, cfg.adaptor_dropout,
                                           target_rms=scale)
        logger.info("TMFModel: %s, hidden %d, vocab %d; trainable %s", cfg.lm.name_or_path, hidden,
                    self.vocab_size, {k: sum(p.numel() for p in v) for k, v in self.parameter_groups().items()})

    # ------------------------------------------------------------------ tables
    def _mask_modalities_for_training(self, names: list[str]) -> None:
        """``cfg.masked_modalities``: as :meth:`drop_modalities`, refusing to leave an item with no modality."""
        present = [m for m, any_item in zip(MODALITIES, self.modality_mask_table.any(dim=0).tolist(), strict=True)
                   if any_item]
        had_any = self.modality_mask_table.any(dim=1)
        self.drop_modalities(names)
        emptied = int((had_any & ~self.modality_mask_table.any(dim=1)).sum())
        if emptied:
            raise ValueError(f"masked_modalities {names}: {emptied} items would have no modality left (the tables "
                             f"have {present}); keep at least one modality that every item has")
        logger.info("modalities %s masked out of the fusion (model.masked_modalities)", names)

    def drop_modalities(self, names: list[str] | tuple[str, ...]) -> None:
        """Mask the modalities ``names`` out of every item's fusion input (an inference-time ablation).

        The fusion (Eq. 5-8) then treats them as absent, as it treats ML-100k's missing images. ``graph`` is the
        item-level graph embedding only: behavior slots keep the graph encoder's behavior embeddings.
        """
        unknown = sorted(set(names) - set(MODALITIES))
        if unknown:
            raise ValueError(f"drop_modalities: unknown modality {unknown}; expected some of {list(MODALITIES)}")
        for name in names:
            self.modality_mask_table[:, MODALITIES.index(name)] = False

    def _register_tables(self, tables: ModalityTables, dims: dict[str, int]) -> None:
        n_items = tables.n_items
        rows, masks = {}, []
        for name in MODALITIES:
            table = getattr(tables, name)
            if table is None:
                rows[name] = torch.zeros(n_items, dims[name])
                masks.append(torch.zeros(n_items, dtype=torch.bool))
            else:
                rows[name] = table.item.detach().float()
                masks.append(table.item_mask.detach().bool())
        self.register_buffer("image_table", rows["image"], persistent=False)
        self.register_buffer("text_table", rows["text"], persistent=False)
        self.register_buffer("graph_table", rows["graph"], persistent=False)
        self.register_buffer("modality_mask_table", torch.stack(masks, dim=-1), persistent=False)
        behavior = tables.graph.behavior if tables.graph is not None else None
        self.register_buffer("behavior_table", torch.zeros(0, 0) if behavior is None else behavior.detach().float(),
                             persistent=False)

    # --------------------------------------------------------------- parameters
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters per group of Eq. 9-11: ``lora``, ``fusion``, ``item_adaptor``, ``behavior_adaptor``."""
        lora = [p for n, p in self.peft_model.named_parameters() if p.requires_grad and "lora_" in n]
        groups = {"lora": lora}
        for name in ADAPTOR_GROUPS:
            groups[name] = [p for p in getattr(self, name).parameters() if p.requires_grad]
        return groups

    def adaptor_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{group}.{name}": tensor for group in ADAPTOR_GROUPS
                for name, tensor in getattr(self, group).state_dict().items()}

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self.peft_model, save_embedding_layers=False)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _row_tasks(batch: Mapping[str, Any], n_rows: int) -> list[str]:
        tasks = batch.get("tasks") or ([batch["task"]] * n_rows if batch.get("task") else None)
        if tasks is None or len(tasks) != n_rows:
            raise ValueError(f"batch needs 'tasks' (one per row, {n_rows} rows) or 'task'; got {tasks!r}")
        unknown = sorted(set(tasks) - set(TRAINABLE_BY_TASK))
        if unknown:
            raise ValueError(f"batch has unknown task(s) {unknown}; expected {sorted(TRAINABLE_BY_TASK)}")
        return list(tasks)

    def _trainable_rows(self, tasks: list[str], group: str, device: torch.device) -> torch.Tensor:
        return torch.tensor([group in TRAINABLE_BY_TASK[t] for t in tasks], dtype=torch.bool, device=device)

    @staticmethod
    def _check_slot_counts(kind: str, slot_mask: torch.Tensor, counts: torch.Tensor) -> None:
        per_row = slot_mask.sum(dim=1)
        if not torch.equal(per_row, counts.to(per_row.dtype)):
            row = int((per_row != counts.to(per_row.dtype)).nonzero()[0, 0])
            raise ValueError(f"row {row}: {int(per_row[row])} {kind} slot positions in the token mask but "
                             f"{int(counts[row])} {kind} slot vectors")

    def item_slot_vectors(self, batch: Mapping[str, Any], tasks: list[str]) -> torch.Tensor:
        """``[S, hidden]``: fused + adapted vectors of every item slot, in order of appearance (row-major)."""
        slot_items = batch["slot_items"]
        n_items = batch["n_slot_items"]
        if self.text_table.shape[0] == 0:
            raise ValueError("the batch has item slots but the model has no item tables (pass ModalityTables)")
        if int(slot_items.max()) >= self.text_table.shape[0]:
            raise ValueError(f"slot_items holds item index {int(slot_items.max())} but the tables have "
                             f"{self.text_table.shape[0]} items")
        n_positions = slot_items.shape[1]
        valid = torch.arange(n_positions, device=slot_items.device).unsqueeze(0) < n_items.unsqueeze(1)
        index = slot_items.clamp(min=0)
        modality_mask = self.modality_mask_table[index] & valid.unsqueeze(-1)
        # rows without item slots (easy / medium prompts in a mixed batch) have no history slots either
        n_history = torch.minimum(batch["n_history_items"], n_items)
        attn_mask = item_attention_mask(n_history, n_items, n_positions)
        rows = self._trainable_rows(tasks, "fusion", slot_items.device)
        fused = _call(self.fusion, rows, self.image_table[index], self.text_table[index], self.graph_table[index],
                      modality_mask, attn_mask)
        adapted = _call(self.item_adaptor, self._trainable_rows(tasks, "item_adaptor", slot_items.device), fused)
        return adapted[valid]

    def behavior_slot_vectors(self, batch: Mapping[str, Any], tasks: list[str]) -> torch.Tensor:
        """``[S_b, hidden]``: adapted graph behavior embeddings of every behavior slot, in order."""
        slot_behaviors = batch["slot_behaviors"]
        if self.behavior_table.numel() == 0:
            raise ValueError("the batch has behavior slots but the graph table has no 'behavior' embeddings")
        if int(slot_behaviors.max()) >= self.behavior_table.shape[0]:
            raise ValueError(f"slot_behaviors holds behavior index {int(slot_behaviors.max())} but the graph "
                             f"table has {self.behavior_table.shape[0]} behaviors")
        valid = slot_behaviors >= 0
        rows = self._trainable_rows(tasks, "behavior_adaptor", slot_behaviors.device)
        adapted = _call(self.behavior_adaptor, rows, self.behavior_table[slot_behaviors.clamp(min=0)])
        return adapted[valid]

    def embed_inputs(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[B, T, hidden]`` input embeddings with slot vectors scattered in (``masked_scatter``)."""
        input_ids = batch["input_ids"]
        if int(input_ids.max()) >= self.vocab_size:
            raise ValueError(f"input_ids holds token {int(input_ids.max())} >= vocabulary size {self.vocab_size}")
        embeds = self.causal_lm.get_input_embeddings()(input_ids)
        tasks = self._row_tasks(batch, input_ids.shape[0])
        item_mask = batch.get("item_slot_mask")
        if item_mask is not None and bool(item_mask.any()):
            self._check_slot_counts("item", item_mask, batch["n_slot_items"])
            vectors = self.item_slot_vectors(batch, tasks)
            embeds = embeds.masked_scatter(item_mask.unsqueeze(-1), vectors.to(embeds.dtype))
        behavior_mask = batch.get("behavior_slot_mask")
        if behavior_mask is not None and bool(behavior_mask.any()):
            self._check_slot_counts("behavior", behavior_mask, (batch["slot_behaviors"] >= 0).sum(dim=1))
            vectors = self.behavior_slot_vectors(batch, tasks)
            embeds = embeds.masked_scatter(behavior_mask.unsqueeze(-1), vectors.to(embeds.dtype))
        return embeds

    # ----------------------------------------------------------------- forward
    def hidden_states(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Final (normed) hidden states ``[B, T, hidden]`` of the decoder over the slot-filled embeddings."""
        decoder = self.causal_lm.get_decoder()
        out = decoder(inputs_embeds=self.embed_inputs(batch), attention_mask=batch["attention_mask"],
                      use_cache=False)
        return out.last_hidden_state

    def logits_at(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits (fp32) for selected hidden states ``[K, hidden]``."""
        logits = self.causal_lm.get_output_embeddings()(hidden).float()
        cap = getattr(self.causal_lm.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _labelled_logits(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``[K, vocab]`` at the K positions whose next token is labelled, their targets and rows."""
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("the batch has no 'labels' (collate with with_answer=True); for generation use "
                             "embed_inputs() with the LM")
        hidden = self.hidden_states(batch)
        targets = labels[:, 1:]
        where = targets != -100
        logits = self.logits_at(hidden[:, :-1][where])
        return logits, targets[where], where.nonzero()[:, 0]

    def sequence_log_likelihood(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[B]``: summed log-probability of each row's labelled tokens (candidate ranking)."""
        logits, targets, rows = self._labelled_logits(batch)
        log_probs = -F.cross_entropy(logits, targets, reduction="none")
        total = torch.zeros(batch["labels"].shape[0], dtype=log_probs.dtype, device=log_probs.device)
        return total.index_add(0, rows, log_probs)

    def forward(self, batch: Mapping[str, Any], return_logits: bool = False) -> TMFOutput:
        """Token-mean NLL over the answer tokens; logits are computed only where labels exist."""
        logits, targets, _ = self._labelled_logits(batch)
        if targets.numel() == 0:
            raise ValueError("the batch has no labelled tokens (every answer was truncated away?)")
        loss = F.cross_entropy(logits, targets)
        return TMFOutput(loss=loss, n_label_tokens=int(targets.numel()), logits=logits if return_logits else None)

    # ------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path, *, lora_state: dict[str, torch.Tensor] | None = None,
                        adaptor_state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the PEFT adapter, ``adaptors.safetensors`` and the resolved model config into ``directory``.

        ``lora_state`` / ``adaptor_state`` let a distributed trainer pass gathered tensors.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lora_state = self.lora_state_dict() if lora_state is None else lora_state
        self.peft_model.save_pretrained(str(directory), state_dict=lora_state, save_embedding_layers=False)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in
                   (self.adaptor_state_dict() if adaptor_state is None else adaptor_state).items()}
        save_file(tensors, str(directory / ADAPTORS_FILE),
                  metadata={"tables": json.dumps(self.table_description), "format": "llmrec-tmf-adaptors-1"})
        (directory / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
                                                    encoding="utf-8")
        return directory

    def load_trainable_state(self, directory: str | Path) -> None:
        """Load LoRA + adaptor weights saved by :meth:`save_pretrained` into this model (strict)."""
        directory = Path(directory)
        lora_file = directory / "adapter_model.safetensors"
        adaptor_file = directory / ADAPTORS_FILE
        for path in (lora_file, adaptor_file):
            if not path.is_file():
                raise FileNotFoundError(f"{directory}: missing {path.name} (not a TMF checkpoint?)")
        result = set_peft_model_state_dict(self.peft_model, load_file(str(lora_file)))
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"{lora_file}: unexpected LoRA keys {unexpected[:5]} (different lora settings?)")
        adaptor = load_file(str(adaptor_file))
        for group in ADAPTOR_GROUPS:
            part = {k[len(group) + 1:]: v for k, v in adaptor.items() if k.startswith(group + ".")}
            try:
                getattr(self, group).load_state_dict(part, strict=True)
            except RuntimeError as err:
                raise ValueError(f"{adaptor_file}: {group} does not match this model: {err}") from None
        self._warn_on_table_mismatch(adaptor_file)

    def _warn_on_table_mismatch(self, adaptor_file: Path) -> None:
        with safe_open(str(adaptor_file), framework="pt") as handle:
            saved = json.loads((handle.metadata() or {}).get("tables", "{}"))
        if saved and saved != self.table_description:
            logger.warning("%s was trained with tables %s but this model holds %s", adaptor_file, saved,
                           self.table_description)

    @classmethod
    def from_pretrained(cls, directory: str | Path, tables: ModalityTables | None = None, *,
                        lm: nn.Module | None = None, tokenizer: Any = None,
                        overrides: list[str] | tuple[str, ...] = ()) -> TMFModel:
        """Rebuild a model saved by :meth:`save_pretrained` (base LM from its config, or ``lm`` if given)."""
        directory = Path(directory)
        config_file = directory / MODEL_CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{directory}: missing {MODEL_CONFIG_FILE} (not a TMF checkpoint?)")
        saved = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        if "fused" not in (saved.get("lora") or {}):  # saved before the fused forward: PEFT's, as it was trained
            overrides = ["lora.fused=false", *overrides]
        cfg = load_config(ModelConfig, config_file, overrides)
        model = cls(cfg, tables, lm=lm, tokenizer=tokenizer)
        model.load_trainable_state(directory)
        return model
