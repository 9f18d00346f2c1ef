"""M³BSR: multi-modal multi-behavior sequential recommendation with conditional diffusion denoising.

Paper: Cui, Lu, Tong, Li, Zhao, SIGIR 2025 (``../shared/papers/m3bsr.txt``; equation numbers are the
paper's). Every choice where the paper is silent, ambiguous or wrong is marked *Choice* and listed
in docs/m3bsr.md. The diffusion pieces are :mod:`graph_encoders.diffusion`.

Behaviors. The paper has two, click (auxiliary) and favour (target). The project's sequences are one
interleaved, left-padded timeline; ``click_behaviors`` / ``favor_behaviors`` (0-based behavior
indices, set per dataset in the configs) say which positions belong to the click and the favour
**view** (a position may be in both: ML-100k clicks are every rating). Each view keeps the timeline:
its features are zero off the view, and its attention reads only the view's positions ``<= t``.

Inputs (§4.1):

* Eq. 3  ID modality ``h^id = E^id[item]`` (an embedding is the MLP of a one-hot id). *Choice:* item
  id only: :class:`DatasetSpec` carries no brand / seller / category ids.
* Eq. 4-5  ``h^m = W_m f^m[item] + b_m`` for the frozen text / image tables (the project's encoders
  stand in for CLIP), each projected to ``d``. An absent table drops its modality.

Conditional diffusion modality denoising (Eq. 6-10), per present modality ``m ∈ {text, image}``:
training samples ``t ~ U{1..T_m}`` and ``ε`` per position, ``h_t = sqrt(ᾱ_t) h^m + sqrt(1-ᾱ_t) ε``
(Eq. 7 as intended), and predicts ``ε̂ = CI(h_t, h^id)`` (Eq. 9: query ``h_t`` + time embedding,
keys / values the ID features of positions ``<= t``); ``L_m = mean ‖ε - ε̂‖²`` (*Choice*, Eq. 10 as
printed compares noisy and denoised features and repeats its term). Downstream goes the one-step
estimate ``ĥ_0`` in training and, in eval mode, the full reverse chain (Eq. 8, mean steps as printed)
from ``h_{T}`` built with noise drawn from a generator seeded by ``(eval_noise_seed, user)``;
*Choice:* the eval scores are the mean logits of ``eval_samples`` such chains (start noise seeded
``eval_noise_seed + k``), since one chain's ranking carries its start noise.
*Choices* (options): ``eval_start: clean`` starts that chain from ``h^m`` itself (no noise added);
``modality_condition: own`` conditions each position on its own item's ID only.

Conditional diffusion behavior denoising (Eq. 11-13), per modality ``m ∈ {id, text, image}``: the
click view's (modality-denoised) features are noised and denoised with the favour view's features
of the same modality as condition (keys: favour positions strictly before ``t``); ``L_b`` as ``L_m``.

Multi-expert interest extraction (Eq. 14-22):

* Eq. 14-15  ``h_cl = W_cl [h_cl^m]_m``, ``h_fa = W_fa [h_fa^m]_m`` (concatenated, projected back to d).
* Eq. 16-17  ``ĥ^share = h_cl + CrossAttn(h_cl, h_fa)`` (favour keys ``<= t``), then the shared
  Transformer expert ``h_common`` (causal over every position).
* Eq. 18-19  one causal Transformer expert per behavior and modality over that view.
* Eq. 20  *Choice:* the repulsion form ``L_c = mean_i log Σ_{k≠i} exp(cos(h_i, h_k) / τ)`` over the
  ``2|M| + 1`` expert outputs of each trained position (the printed form is shift-invariant).
* Eq. 21-22  ``g = σ(W_g [h_common; h_cl; h_fa] + b_g)``, ``y = g ⊙ h_common + (1-g) ⊙ W_s [h_cl; h_fa]``
  (``h_cl``, ``h_fa`` the expert outputs; ``W_s`` resolves the printed size mismatch).

Prediction (Eq. 23-25): ``p(i | y) = softmax(W y + b)`` with its own output layer ``W``;
``L = L_main + λ_c L_c + λ_m L_m + λ_b L_b``, ``L_main`` the softmax cross-entropy at every trained
position. ``item_embeddings()`` is the **input** ID table ``E^id`` (Eq. 3), not the rows of ``W``;
there is no behavior table (behaviors select views), so ``behavior_embeddings()`` is None.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from graph_encoders.base import (
    MODALITY_KINDS,
    DatasetSpec,
    ModelConfig,
    SeqBatch,
    SequentialRecommender,
    register_model,
)
from graph_encoders.diffusion import ConditionalDenoiser, ConditionAttention, NoiseSchedule, reverse_process
from graph_encoders.layers import TransformerEncoder, attention_mask, init_weights
from llmrec.config import ConfigError

log = logging.getLogger(__name__)
VIEWS = ("click", "favor")


@dataclass
class M3BSRConfig(ModelConfig):
    """M³BSR settings; defaults are the paper's where it gives them (see docs/m3bsr.md)."""

    # d; the paper searches {64, 128, 256, 512} (ID 16, CLIP 512): 64 keeps CPU training practical
    hidden_size: int = 64
    max_len: int = 50  # window L (the paper keeps the 50 newest records)
    dropout: float = 0.2  # not given in the paper
    use_behaviors: bool = False  # behaviors enter as the click / favour views; must stay false
    num_layers: int = 1  # Transformer blocks per expert (not given)
    num_heads: int = 2  # attention heads of experts, cross-attentions and denoisers (not given)
    inner_size: int | None = None  # feed-forward width; None = hidden_size
    attention_dropout: float | None = None  # None = dropout
    modalities: list[str] = field(default_factory=lambda: list(MODALITY_KINDS))  # used when their table exists
    click_behaviors: list[int] | None = None  # 0-based behavior indices of the click view; None = every behavior
    favor_behaviors: list[int] | None = None  # 0-based behavior indices of the favour view; None = the target
    denoise: Literal["all", "modality", "behavior", "none"] = "all"  # which diffusion layers run (ablations)
    modality_steps: int = 10  # T_m (§5.4.2 best; §5.1.3 says 15)
    behavior_steps: int = 10  # T_b (§5.4.1 best)
    beta_start: float = 0.001  # noise schedule range [0.001, 0.1] (§5.1.3), linear
    beta_end: float = 0.1
    # diffuse each feature vector divided by its RMS (unit scale, DDPM's convention for the schedule) and scale the
    # result back; false: the raw features (std ~0.02 per dimension at init, so the unit-variance noise drowns them).
    # On by default since session 20: with tie_output, +0.068 test pop100 HR@10 on ML-100k (docs/m3bsr.md)
    diffuse_normalized: bool = True
    tie_output: bool = True  # Eq. 23's W is the ID table E^id (bias b kept); false: a separate W (the literal reading)
    # h^id = sqrt(d) · E^id (SASRec's input scale; the ID features then outweigh the position embedding); false:
    # h^id = E^id as Eq. 3 prints it (same scale as the position embedding at init)
    scale_id: bool = False
    # where the eval-mode reverse chain (Eq. 8) starts: "noise" = h_T = sqrt(ᾱ_T) h^m + sqrt(1-ᾱ_T) ε, the noisy
    # feature Eq. 8 names; "clean" = h^m itself, no noise added (DiffRec's sampling_steps=0 reading)
    eval_start: Literal["noise", "clean"] = "noise"
    # which ID features condition the modality denoiser (Eq. 9): "history" = every ID at positions <= t;
    # "own" = the ID of the item at t only (§4.2.1 "ID features as conditions", read per item)
    modality_condition: Literal["history", "own"] = "history"
    eval_noise_seed: int = 0  # seeds the eval-mode start noise (per user)
    # eval-mode scores are the mean logits of this many reverse chains, each from its own start noise (draw k is
    # seeded by eval_noise_seed + k, so 1 is the single chain of sessions 10-24); ignored when no chain starts from
    # noise (eval_start: clean, denoise: none). 4 since session 25: chosen on validation (docs/m3bsr.md)
    eval_samples: int = 4
    lambda_contrast: float = 0.05  # λ_c (§5.4.3)
    lambda_modality: float = 0.02  # λ_m (§5.4.2)
    lambda_behavior: float = 0.02  # λ_b (§5.4.1)
    temperature: float = 0.3  # τ of Eq. 20 (§5.4.3)

    @property
    def noisy_start(self) -> bool:
        """Whether an eval-mode reverse chain starts from noise (so ``eval_samples`` chains can differ)."""
        return self.eval_start == "noise" and self.denoise != "none"

    def validate(self) -> None:
        super().validate()
        if self.use_behaviors:
            raise ConfigError("use_behaviors must be false for M3BSR (behaviors enter as click / favour views)")
        if self.num_layers < 1 or self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ConfigError(f"num_layers >= 1 and num_heads >= 1 dividing hidden_size {self.hidden_size} are "
                              f"required, got {self.num_layers}, {self.num_heads}")
        if not self.modalities or any(m not in MODALITY_KINDS for m in self.modalities) \
                or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities must be distinct entries of {list(MODALITY_KINDS)}, got {self.modalities}")
        for key in ("click_behaviors", "favor_behaviors"):
            value = getattr(self, key)
            if value is not None and (not value or min(value) < 0 or len(set(value)) != len(value)):
                raise ConfigError(f"{key} must be null or distinct 0-based behavior indices, got {value}")
        if self.modality_steps < 1 or self.behavior_steps < 1:
            raise ConfigError(f"modality_steps and behavior_steps must be >= 1, got "
                              f"{self.modality_steps}, {self.behavior_steps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ConfigError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if min(self.lambda_contrast, self.lambda_modality, self.lambda_behavior) < 0:
            raise ConfigError("lambda_contrast, lambda_modality and lambda_behavior must be >= 0")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.eval_samples < 1:
            raise ConfigError(f"eval_samples must be >= 1, got {self.eval_samples}")


def masked_mean_square(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the ``mask`` positions of ``‖prediction - target‖² / d`` (0 when the mask is empty)."""
    if not bool(mask.any()):
        return prediction.new_zeros(())
    return (prediction[mask] - target[mask]).square().mean()


@register_model("m3bsr")
class M3BSR(SequentialRecommender):
    """Denoised multi-modal click / favour views, shared and specific experts, gated fusion (module docstring)."""

    config_class = M3BSRConfig
    inputs = frozenset({"items", "behaviors"})
    optional_inputs = frozenset(MODALITY_KINDS)  # an absent table drops its modality

    def __init__(self, config: M3BSRConfig, spec: DatasetSpec) -> None:
        super().__init__(config, spec)
        d, inner = config.hidden_size, config.inner_size or config.hidden_size
        tables = {"text": spec.text_table, "image": spec.image_table}
        self.modal = [m for m in config.modalities if tables[m] is not None]  # denoised by the ID condition
        dropped = [m for m in config.modalities if tables[m] is None]
        if dropped:
            log.info("M3BSR: no %s table, so that modality is dropped (not fed zeros)", "/".join(dropped))
        self.modality_names = ["id", *self.modal]
        self._register_views(config, spec)
        for m in self.modal:
            table = tables[m].detach().float()
            if table.shape[0] != spec.n_items:
                raise ValueError(f"M3BSR: the {m} table has {table.shape[0]} rows, the dataset {spec.n_items} items")
            self.register_buffer(f"{m}_features", table, persistent=False)  # inputs, not weights

        self.items = nn.Embedding(spec.n_items + 1, d, padding_idx=0)  # E^id (Eq. 3), row 0 = padding
        self.projections = nn.ModuleDict({m: nn.Linear(tables[m].shape[1], d) for m in self.modal})  # Eq. 4-5
        self.positions = nn.Embedding(config.max_len, d)
        self.dropout = nn.Dropout(config.dropout)
        self.denoise_modality = config.denoise in ("all", "modality") and bool(self.modal)
        self.denoise_behavior = config.denoise in ("all", "behavior")
        self.modality_schedule = NoiseSchedule(config.modality_steps, config.beta_start, config.beta_end)
        self.behavior_schedule = NoiseSchedule(config.behavior_steps, config.beta_start, config.beta_end)
        denoiser = {"hidden_size": d, "num_heads": config.num_heads, "dropout": config.dropout, "inner_size": inner}
        self.modality_denoisers = nn.ModuleDict(
            {m: ConditionalDenoiser(**denoiser) for m in self.modal} if self.denoise_modality else {})
        self.behavior_denoisers = nn.ModuleDict(
            {m: ConditionalDenoiser(**denoiser) for m in self.modality_names} if self.denoise_behavior else {})

        k = len(self.modality_names)
        block = {"hidden_size": d, "num_heads": config.num_heads, "inner_size": inner, "dropout": config.dropout,
                 "attention_dropout": config.attention_dropout, "activation": "relu", "norm_first": True}
        self.view_inputs = nn.ModuleDict({v: nn.Linear(k * d, d) for v in VIEWS})  # Eq. 14-15
        self.share_norm = nn.LayerNorm(d, eps=1e-8)
        self.share_attention = ConditionAttention(d, config.num_heads, config.dropout)  # Eq. 16
        self.common_expert = TransformerEncoder(config.num_layers, **block)  # Eq. 17
        self.experts = nn.ModuleDict({f"{v}_{m}": TransformerEncoder(config.num_layers, **block)
                                      for v in VIEWS for m in self.modality_names})  # Eq. 18-19
        self.specific = nn.Linear(2 * k * d, d)  # W_s: [h_cl; h_fa] back to d (Eq. 22)
        self.gate = nn.Linear((2 * k + 1) * d, d)  # W_g, b_g (Eq. 22)
        self.output = nn.Linear(d, spec.n_items)  # W, b (Eq. 23); with tie_output only b is used
        init_weights(self)

    def _register_views(self, config: M3BSRConfig, spec: DatasetSpec) -> None:
        """Bool tables over behavior index + 1 (0 = padding): which behaviors form the click / favour view."""
        chosen = {"click": (config.click_behaviors if config.click_behaviors is not None
                            else list(range(spec.n_behaviors))),
                  "favor": config.favor_behaviors if config.favor_behaviors is not None else [spec.target_behavior]}
        for view, indices in chosen.items():
            if max(indices) >= spec.n_behaviors:
                raise ConfigError(f"model.{view}_behaviors {indices}: "
                                  f"the dataset has behaviors 0..{spec.n_behaviors - 1}")
            table = torch.zeros(spec.n_behaviors + 1, dtype=torch.bool)
            table[torch.tensor(indices) + 1] = True
            self.register_buffer(f"{view}_table", table, persistent=False)

    # ---- inputs and denoising (Eq. 3-13) ------------------------------------------------
    def _features(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"id": h^id, m: h^m}`` ``[B, L, d]`` (Eq. 3-5); ``h^id`` times ``sqrt(d)`` with ``scale_id``."""
        index = (items - 1).clamp(min=0)
        ids = self.items(items)
        features = {"id": ids * self.config.hidden_size ** 0.5 if self.config.scale_id else ids}
        for m in self.modal:
            features[m] = self.projections[m](getattr(self, f"{m}_features")[index])
        return features

    def _eval_noise(self, users: torch.Tensor, length: int, like: torch.Tensor, draw: int = 0) -> torch.Tensor:
        """``[chains, B, L, d]`` start noise of the reverse chains, seeded per ``(eval_noise_seed + draw, user)``.

        A row's noise depends on its user and the draw only (not on the batch it is scored in); columns
        are right-aligned, so the newest position always gets the same draw.
        """
        chains, d = len(self.modal) + len(self.modality_names), self.config.hidden_size
        # the CPU generator keeps 32 seed bits; the odd multiplier gives one user distinct seeds per eval_noise_seed
        seeds = [((self.config.eval_noise_seed + draw) * 0x9E3779B1 + u) % 2**32 for u in users.tolist()]
        draws = [torch.randn(chains, self.config.max_len, d, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(draws, 1)[:, :, -length:].to(like)

    def _diffuse(self, denoiser: ConditionalDenoiser, schedule: NoiseSchedule, x0: torch.Tensor,
                 condition: torch.Tensor, mask: torch.Tensor, trained: torch.Tensor,
                 start_noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(denoised features, ‖ε - ε̂‖² at the trained positions)``; eval mode runs the reverse chain.

        With ``diffuse_normalized`` each position's vector is divided by its (detached) RMS before Eq. 7 / 11 and
        the result multiplied back, so ε ~ N(0, I) meets unit-scale data whatever scale the features have learned;
        per position, so a row's scores never depend on the other rows of its batch.
        """
        scale = None
        if self.config.diffuse_normalized:
            scale = x0.detach().square().mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
            x0 = x0 / scale
        denoised, loss = self._diffuse_unit(denoiser, schedule, x0, condition, mask, trained, start_noise)
        return (denoised if scale is None else denoised * scale), loss

    def _diffuse_unit(self, denoiser: ConditionalDenoiser, schedule: NoiseSchedule, x0: torch.Tensor,
                      condition: torch.Tensor, mask: torch.Tensor, trained: torch.Tensor,
                      start_noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            t = schedule.sample_steps(x0.shape[:2], x0.device)
            noise = torch.randn_like(x0)
            noisy = schedule.q_sample(x0, t, noise)  # Eq. 7 / 11
            predicted = denoiser(noisy, t, condition, mask)  # Eq. 9 / 12
            return schedule.predict_start(noisy, t, predicted), masked_mean_square(predicted, noise, trained)

        def predict(x: torch.Tensor, t: int) -> torch.Tensor:
            return denoiser(x, torch.full(x.shape[:2], t, dtype=torch.long, device=x.device), condition, mask)

        start = x0 if self.config.eval_start == "clean" else schedule.q_sample(x0, schedule.steps, start_noise)
        return reverse_process(start, predict, schedule), x0.new_zeros(())  # Eq. 8

    def views(self, batch: SeqBatch, draw: int = 0) -> tuple[dict[str, dict[str, torch.Tensor]],
                                                             dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``({view: {m: features}}, {view: membership [B, L]}, {"modality": L_m, "behavior": L_b})``.

        ``draw`` picks the eval-mode start noise (see :meth:`_eval_noise`); training ignores it.
        """
        valid = batch.valid
        member = {"click": self.click_table[batch.behaviors] & valid,
                  "favor": self.favor_table[batch.behaviors] & valid}
        length = batch.items.shape[1]
        past = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        noisy_start = not self.training and self.config.eval_start == "noise"
        noise = self._eval_noise(batch.users, length, self.items.weight, draw) if noisy_start else None
        features = self._features(batch.items)
        zero = features["id"].new_zeros(())
        losses = {"modality": zero, "behavior": zero}
        if self.config.modality_condition == "own":  # the item's own ID only
            id_mask = valid[:, None, :] & torch.eye(length, dtype=torch.bool, device=valid.device)
        else:  # every ID at positions <= t
            id_mask = valid[:, None, :] & past
        for c, m in enumerate(self.modal if self.denoise_modality else []):  # Eq. 6-10
            features[m], loss = self._diffuse(self.modality_denoisers[m], self.modality_schedule, features[m],
                                              features["id"], id_mask, valid, None if noise is None else noise[c])
            losses["modality"] = losses["modality"] + loss
        favor_keys = member["favor"][:, None, :] & past.tril(-1)  # favour positions strictly before t
        clicks = dict(features)
        for c, m in enumerate(self.modality_names if self.denoise_behavior else []):  # Eq. 11-13
            chain = None if noise is None else noise[len(self.modal) + c]
            clicks[m], loss = self._diffuse(self.behavior_denoisers[m], self.behavior_schedule, features[m],
                                            features[m] * member["favor"][..., None], favor_keys, member["click"],
                                            chain)
            losses["behavior"] = losses["behavior"] + loss
        views = {"click": {m: clicks[m] * member["click"][..., None] for m in self.modality_names},
                 "favor": {m: features[m] * member["favor"][..., None] for m in self.modality_names}}
        return views, member, losses

    # ---- multi-expert interest extraction (Eq. 14-22) -------------------------------------
    def _positional(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len {self.config.max_len}")
        positions = torch.arange(self.config.max_len - length, self.config.max_len, device=x.device)
        return self.dropout(x + self.positions(positions)[None])

    def _expert(self, encoder: TransformerEncoder, x: torch.Tensor, member: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """Causal blocks whose keys are the view's positions ``<= t``; every real position keeps its state.

        A position outside the view has zero features (position embedding only) and reads the view's
        earlier positions; :class:`TransformerEncoder` would zero it, so its blocks are run here.
        """
        mask = attention_mask(member, causal=True)  # view keys <= t, and each query itself
        keep = valid[..., None].to(x.dtype)
        x = x * keep
        for block in encoder.blocks:
            x = block(x, mask) * keep
        return encoder.final_norm(x)

    def states(self, batch: SeqBatch, draw: int = 0) -> tuple[torch.Tensor, list[torch.Tensor],
                                                               dict[str, torch.Tensor]]:
        """``(y [B, L, d] (Eq. 22), expert outputs (h_common first), auxiliary losses)``;
        ``draw`` as in :meth:`views`."""
        views, member, losses = self.views(batch, draw)
        valid = batch.valid
        joined = {v: torch.cat([views[v][m] for m in self.modality_names], dim=-1) for v in VIEWS}
        click, favor = (self.view_inputs[v](joined[v]) for v in VIEWS)  # Eq. 14-15
        length = click.shape[1]
        past = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        share = click + self.share_attention(self.share_norm(click), favor,
                                             member["favor"][:, None, :] & past)  # Eq. 16
        common = self.common_expert(self._positional(share), valid, causal=True)  # Eq. 17
        specific = [self._expert(self.experts[f"{v}_{m}"], self._positional(views[v][m]), member[v], valid)
                    for v in VIEWS for m in self.modality_names]  # Eq. 18-19
        experts = torch.cat(specific, dim=-1)  # [h_cl; h_fa] (Eq. 21)
        gate = torch.sigmoid(self.gate(torch.cat([common, experts], dim=-1)))  # Eq. 22
        y = gate * common + (1.0 - gate) * self.specific(experts)
        return y, [common, *specific], losses

    def contrast_loss(self, outputs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Repulsion form of Eq. 20: ``mean_i log Σ_{k≠i} exp(cos(h_i, h_k) / τ)`` per trained position."""
        features = F.normalize(torch.stack([h[mask] for h in outputs], dim=1), dim=-1)  # [N, K, d]
        similarity = features @ features.transpose(1, 2) / self.config.temperature
        eye = torch.eye(similarity.shape[-1], dtype=torch.bool, device=similarity.device)
        return torch.logsumexp(similarity.masked_fill(eye, float("-inf")), dim=-1).mean()

    # ---- the interface ---------------------------------------------------------------------
    def encode(self, batch: SeqBatch) -> torch.Tensor:
        """The fused preference ``y`` (Eq. 22) at every position."""
        return self.states(batch)[0]

    def item_embeddings(self) -> torch.Tensor:
        """The input ID-modality table ``E^id`` (Eq. 3), not the output layer ``W`` of Eq. 23."""
        return self.items.weight[1 : self.n_items + 1]

    def _logits(self, y: torch.Tensor) -> torch.Tensor:
        """``W y + b`` (Eq. 23 before the softmax); ``W = E^id`` (rows 1..n) when ``tie_output``."""
        if self.config.tie_output:
            return F.linear(y, self.items.weight[1 : self.n_items + 1], self.output.bias)
        return self.output(y)

    def eval_draws(self) -> int:
        """How many reverse chains an eval-mode score averages: ``eval_samples`` when a chain starts from noise."""
        return self.config.eval_samples if not self.training and self.config.noisy_start else 1

    def score_all(self, batch: SeqBatch) -> torch.Tensor:
        """``W y + b`` (Eq. 23, before the softmax) at the newest position.

        In eval mode with noisy starts, the mean over ``eval_samples`` reverse chains (*Choice*: a Monte-Carlo
        estimate of the expected score under the start noise; one chain's ranking carries that noise).
        """
        draws = self.eval_draws()
        total = self._logits(self.states(batch)[0][:, -1])
        for draw in range(1, draws):
            total = total + self._logits(self.states(batch, draw)[0][:, -1])
        return total / draws

    def score_candidates(self, batch: SeqBatch, candidates: torch.Tensor) -> torch.Tensor:
        return self.score_all(batch).gather(1, candidates)

    def loss_terms(self, batch: SeqBatch) -> dict[str, torch.Tensor]:
        """``main`` (Eq. 24), ``contrast`` (Eq. 20), ``modality`` (Eq. 10), ``behavior`` (Eq. 13)
        and ``total`` (Eq. 25).

        The diffusion terms are 0 in eval mode (no noise is sampled there).
        """
        if batch.labels is None or batch.loss_mask is None:
            raise ValueError("loss() needs a training batch (labels and loss_mask)")
        mask = batch.loss_mask & (batch.labels > 0)
        if not bool(mask.any()):
            raise ValueError("batch has no position to train on (loss_mask is empty)")
        y, outputs, losses = self.states(batch)
        cfg = self.config
        terms = {"main": F.cross_entropy(self._logits(y[mask]), batch.labels[mask] - 1),
                 "contrast": self.contrast_loss(outputs, mask), **losses}
        terms["total"] = (terms["main"] + cfg.lambda_contrast * terms["contrast"]
                          + cfg.lambda_modality * terms["modality"] + cfg.lambda_behavior * terms["behavior"])
        return terms

    def loss(self, batch: SeqBatch) -> torch.Tensor:
        """``L = L_main + λ_c L_c + λ_m L_m + λ_b L_b`` (Eq. 25)."""
        return self.loss_terms(batch)["total"]
