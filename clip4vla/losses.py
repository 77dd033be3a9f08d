"""Contrastive (InfoNCE) losses for CLIP4VLA pre-training, and the distributed gather they need.

All losses here take **global** embeddings (one vector per clip) and follow one distributed
scheme: every rank scores its *local* rows against the *gathered* columns of the whole
global batch, in both directions, with gradients flowing back through the gather. Each rank's
loss is scaled so that the mean over ranks is exactly the global-batch loss; DDP's gradient
averaging therefore gives the same gradients as single-process training on the global batch.
On one process (or with no process group) everything reduces to the plain single-batch formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "symmetric_nce",
    "gather_with_grad",
    "inter_modal_nce",
    "intra_modal_nce",
    "self_similarity_nce",
    "LogitScale",
    "PretrainLoss",
]

# CLIP's learnable temperature starts at 1/0.07 and is clamped at 100 (OpenAI CLIP).
CLIP_INIT_SCALE = 1.0 / 0.07
# REF multiplies every similarity by a fixed 100.
REF_FIXED_SCALE = 100.0


# ----------------------------------------------------------------------------------------------
# distributed gather
# ----------------------------------------------------------------------------------------------
def _gather_sizes(rows: int, device: torch.device) -> list[int]:
    """Row count of every rank, so that ranks may hold batches of different sizes."""
    size = torch.tensor([rows], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed gradient.

    Every rank's loss depends on every rank's rows, so the gradient of a local row is the sum of
    the gradients all ranks computed for it: an all-reduce (SUM) of the full gradient followed by
    taking our slice. (torch.distributed.nn's version needs reduce_scatter / all_to_all, which not
    every backend has; the gathered features are small, so all_reduce costs nothing noticeable.)
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: list[int]) -> Tensor:  # type: ignore[override]
        rank = dist.get_rank()
        ctx.sizes = sizes
        ctx.rank = rank
        max_rows = max(sizes)
        local = tensor.contiguous()
        if local.shape[0] < max_rows:  # all_gather needs equal shapes: pad, then strip
            pad = local.new_zeros((max_rows - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad], dim=0)
        buffers = [torch.empty_like(local) for _ in sizes]
        dist.all_gather(buffers, local)
        return torch.cat([buf[:n] for buf, n in zip(buffers, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def _gather(t: Tensor, *others: Tensor) -> tuple[list[Tensor], int, int, int]:
    """Gather the rows of ``t`` (and of ``others``, which have as many rows) over ranks.

    Returns (gathered tensors [N, ...], offset of our rows in them, N, world size).
    """
    tensors = [t, *others]
    if not (dist.is_available() and dist.is_initialized()):  # one process: nothing to gather
        return tensors, 0, t.shape[0], 1
    sizes = _gather_sizes(t.shape[0], t.device)  # once for all tensors of the same batch
    rank = dist.get_rank()
    return [_GatherRows.apply(x, sizes) for x in tensors], sum(sizes[:rank]), sum(sizes), len(sizes)


def gather_with_grad(t: Tensor) -> Tensor:
    """All-gather ``t`` along dim 0 over the default process group, keeping the autograd graph.

    Identity when torch.distributed is not initialised or the world has one process. Ranks may
    hold different numbers of rows.
    """
    return _gather(t)[0][0]


@dataclass
class _GatheredBatch:
    """Where this rank's rows sit in the gathered global batch, shared by every loss term."""

    rows: Tensor | None  # local rows that act as anchors [R] (None: all of them)
    targets: Tensor  # their positive's column in the gathered matrices [R]
    col_invalid: Tensor | None  # [N] True for gathered rows that may not act as candidates
    norm: Tensor | float  # world / (number of anchors in the global batch)


def _gather_batch(features: list[Tensor], valid: Tensor | None) -> tuple[list[Tensor], _GatheredBatch]:
    """Gather ``features`` (each ``[B, D]``) and lay out anchors, targets and masks.

    ``valid`` (bool ``[B]``, optional): rows that take part. An invalid row is neither an anchor
    nor a negative for anyone; its features are replaced by zeros *before* anything else, so
    NaN/garbage features of unusable clips cannot leak into values or gradients.
    """
    b = features[0].shape[0]
    if valid is None:
        gathered, offset, total, world = _gather(*features)
        targets = torch.arange(b, device=features[0].device) + offset
        return gathered, _GatheredBatch(rows=None, targets=targets, col_invalid=None, norm=world / total)
    _check_valid(valid, b)
    valid = valid.to(features[0].device)
    features = _zero_invalid(features, valid)
    # the mask travels as uint8: not every backend all-gathers bool
    (*gathered, valid_all), offset, _, world = _gather(*features, valid.to(torch.uint8))
    rows = valid.nonzero().squeeze(1)
    valid_all = valid_all.bool()
    norm = world / valid_all.sum().clamp(min=1).to(features[0].dtype)
    return gathered, _GatheredBatch(rows=rows, targets=rows + offset, col_invalid=~valid_all, norm=norm)


def _check_valid(valid: Tensor, rows: int) -> None:
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.shape != (rows,):
        got = f"{valid.dtype} {tuple(valid.shape)}" if isinstance(valid, Tensor) else type(valid).__name__
        raise ValueError(f"valid must be a bool tensor of shape ({rows},), got {got}")


def _zero_invalid(features: list[Tensor], valid: Tensor) -> list[Tensor]:
    # torch.where, not a multiplication: its backward sends exactly 0 (never 0·NaN) to those rows
    keep = valid[:, None]
    return [torch.where(keep, f, torch.zeros((), dtype=f.dtype, device=f.device)) for f in features]


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
def _check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(
            f"expected 2-D global features [B, D]; got {name_a} {tuple(a.shape)}, {name_b} {tuple(b.shape)}"
        )
    if a.shape != b.shape:
        raise ValueError(
            f"feature shapes differ: {name_a} {tuple(a.shape)} vs {name_b} {tuple(b.shape)}"
        )


def symmetric_nce(logits: Tensor) -> Tensor:
    """``½[CE(S, I) + CE(Sᵀ, I)]`` for a square similarity matrix whose diagonal holds the positives."""
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"symmetric_nce needs a square [N, N] logits matrix, got {tuple(logits.shape)}")
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def _anchors(x: Tensor, where: _GatheredBatch) -> Tensor:
    return x if where.rows is None else x[where.rows]


def _candidates(logits: Tensor, where: _GatheredBatch) -> Tensor:
    """Remove invalid gathered rows from the candidate columns (exp(-inf) = 0)."""
    return logits if where.col_invalid is None else logits.masked_fill(where.col_invalid, float("-inf"))


def _local_rows_nce(x: Tensor, y: Tensor, x_all: Tensor, y_all: Tensor, where: _GatheredBatch, scale: Tensor | float) -> Tensor:
    """Symmetric NCE restricted to our rows of ``S = s·x yᵀ`` and of ``Sᵀ``.

    Row i of S is ``s·x_i · y_allᵀ`` and row i of Sᵀ is ``s·y_i · x_allᵀ``; both have the positive
    at column ``offset + i``. Summing the CE over our rows and multiplying by ``world / total``
    makes the average over ranks equal the global mean (also with unequal per-rank batches).
    """
    ce_xy = F.cross_entropy(_candidates(scale * (_anchors(x, where) @ y_all.t()), where), where.targets, reduction="sum")
    ce_yx = F.cross_entropy(_candidates(scale * (_anchors(y, where) @ x_all.t()), where), where.targets, reduction="sum")
    return 0.5 * (ce_xy + ce_yx) * where.norm


def inter_modal_nce(x: Tensor, y: Tensor, logit_scale: Tensor | float, valid: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between two modalities (paper Eq. 1–2 made symmetric: ½[CE(S) + CE(Sᵀ)]).

    ``x``, ``y``: L2-normalised global features ``[B, D]`` of this rank (row i of x pairs with row i
    of y). Distributed: local rows against the gathered global batch, gradients through the gather.
    ``valid`` (bool ``[B]``): optional rows to use; the others are neither anchors nor negatives.
    """
    _check_pair("x", x, "y", y)
    (x_all, y_all), where = _gather_batch([x, y], valid)
    return _local_rows_nce(x, y, x_all, y_all, where, logit_scale)


def self_similarity_nce(x: Tensor, logit_scale: Tensor | float, valid: Tensor | None = None) -> Tensor:
    """REF's text–text / video–video term: symmetric NCE on ``s·x xᵀ`` with the diagonal as target.

    The positive is the sample itself and every other sample of the same modality is a negative,
    so the term only spreads a modality's embeddings apart (it has a gradient only when that
    tower trains). ``S`` is symmetric, so this equals ``CE(s·x xᵀ, I)``.
    """
    return inter_modal_nce(x, x, logit_scale, valid)


def _intra_rows(z: Tensor, z_hat_all: Tensor, z_all: Tensor, where: _GatheredBatch, scale: Tensor | float) -> Tensor:
    """Summed CE of rows ``[s·z ẑ_allᵀ | s·z z_allᵀ without column offset+i]``, target ``offset+i``."""
    anchors = _anchors(z, where)
    cross = _candidates(scale * (anchors @ z_hat_all.t()), where)  # [R, N]: the masked copy + other masked audios
    same = _candidates(scale * (anchors @ z_all.t()), where)  # [R, N]: other clean audios (Eq. 4, k != i)
    self_mask = torch.zeros_like(same, dtype=torch.bool)
    self_mask[torch.arange(anchors.shape[0], device=z.device), where.targets] = True  # not its own negative
    same = same.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(torch.cat([cross, same], dim=1), where.targets, reduction="sum")


def _intra_local_rows(
    z: Tensor, z_hat: Tensor, z_all: Tensor, z_hat_all: Tensor, where: _GatheredBatch, scale: Tensor | float
) -> Tensor:
    """Both directions of the intra-modal NCE on our rows, scaled like :func:`_local_rows_nce`."""
    forward = _intra_rows(z, z_hat_all, z_all, where, scale)
    swapped = _intra_rows(z_hat, z_all, z_hat_all, where, scale)
    return 0.5 * (forward + swapped) * where.norm


def intra_modal_nce(z: Tensor, z_hat: Tensor, logit_scale: Tensor | float, valid: Tensor | None = None) -> Tensor:
    """Audio ↔ masked-audio NCE (paper Eq. 3–4), made symmetric as REF does (both directions averaged).

    For clip i the candidates are all masked audios ``ẑ_j`` plus all other clean audios
    ``z_k (k ≠ i)``; the target is ``ẑ_i``. The same with z and ẑ swapped; the two are averaged.
    ``z``, ``z_hat``: L2-normalised ``[B, D]``; distributed (and ``valid``) like :func:`inter_modal_nce`.
    """
    _check_pair("z", z, "z_hat", z_hat)
    (z_all, z_hat_all), where = _gather_batch([z, z_hat], valid)
    return _intra_local_rows(z, z_hat, z_all, z_hat_all, where, logit_scale)


def _at_least_fp32(x: Tensor) -> Tensor:
    # fp16/bf16 features (autocast) are upcast: the logits are multiplied by up to 100, and
    # exp/log-sum-exp in half precision loses the small differences the loss is made of
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ----------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------
class LogitScale(nn.Module):
    """The similarity multiplier ``s``.

    Default: fixed 100 (REF). ``learnable=True``: CLIP's parametrisation — stored as a
    log so it stays positive, initialised at 1/0.07, clamped at ``max_scale`` (100) in forward.
    """

    def __init__(self, init_scale: float | None = None, learnable: bool = False, max_scale: float = 100.0):
        super().__init__()
        if init_scale is None:
            init_scale = CLIP_INIT_SCALE if learnable else REF_FIXED_SCALE
        if not init_scale > 0:
            raise ValueError(f"logit scale must be > 0, got init_scale={init_scale}")
        self.learnable = learnable
        self.max_scale = float(max_scale)
        if learnable:
            self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale), dtype=torch.float32))
        else:
            # the value itself (100 is exact in fp32), as a non-persistent buffer: it follows
            # .to(device) without entering the state dict
            self.register_buffer("fixed_scale", torch.tensor(float(init_scale)), persistent=False)

    def forward(self) -> Tensor:
        if self.learnable:
            return self.log_scale.clamp(max=math.log(self.max_scale)).exp()
        return self.fixed_scale

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}, value={float(self().detach()):.4g}"


class PretrainLoss(nn.Module):
    """CLIP4VLA pre-training objective on global features (paper Eq. 5).

    ``L = NCE(S_ta) + NCE(S_av) [+ L_aâ if intra_modal]``.

    ``ref_extras=True`` reproduces REF's ``loss_func=tav_nce``: the video–audio term counted twice
    and, only when the intra-modal loss is on (REF computes them only then), a text–text and a
    video–video term — :func:`self_similarity_nce` on ``s·t tᵀ`` and ``s·v vᵀ`` (each sample its
    own positive). The text–video NCE is reported in ``parts`` and trained on only with
    ``text_video=True`` (our addition, off by default: the paper starts from CLIP, whose towers are
    already aligned; towers trained from scratch, as in the synthetic quick start, have no other
    source of that alignment).

    ``forward`` returns ``(total, parts)``; ``parts`` holds detached scalars for logging. Under
    torch.distributed every rank passes its local rows; see the module docstring. ``valid``
    (bool ``[B]``, optional) marks the rows that take part: the others (clips whose media could
    not be read) are neither anchors nor negatives, and whatever their features hold (even NaN)
    reaches neither the loss nor the gradients. ``has_text`` (bool ``[B]``, optional) marks the rows
    with a caption: the text terms (text–audio, text–video, text–text) use only those, while
    media-only rows still take part in the video–audio and intra-modal terms.
    """

    def __init__(
        self,
        intra_modal: bool = True,
        learnable_scale: bool = False,
        init_scale: float | None = None,
        ref_extras: bool = False,
        max_scale: float = 100.0,
        text_video: bool = False,
        video_audio: bool = True,
    ):
        super().__init__()
        self.intra_modal = intra_modal
        self.video_audio = video_audio
        self.ref_extras = ref_extras
        self.text_video = text_video
        self.logit_scale = LogitScale(init_scale, learnable=learnable_scale, max_scale=max_scale)

    def forward(
        self,
        text: Tensor,
        video: Tensor,
        audio: Tensor,
        masked_audio: Tensor | None = None,
        valid: Tensor | None = None,
        has_text: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        _check_pair("text", text, "audio", audio)
        _check_pair("video", video, "audio", audio)
        if self.intra_modal:
            if masked_audio is None:
                raise ValueError("PretrainLoss(intra_modal=True) needs masked_audio features [B, D]")
            _check_pair("masked_audio", masked_audio, "audio", audio)

        scale = self.logit_scale()
        raw = [text, video, audio] + ([masked_audio] if self.intra_modal else [])
        if valid is not None:  # before normalising: F.normalize's backward turns NaN rows into NaN grads
            _check_valid(valid, audio.shape[0])
            raw = _zero_invalid(raw, valid.to(audio.device))
        feats = [F.normalize(_at_least_fp32(x), dim=-1) for x in raw]
        t, v, a = feats[:3]
        m = feats[3] if self.intra_modal else None
        # gather each modality once and reuse it for every term
        gathered, where = _gather_batch(feats, valid)
        t_all, v_all, a_all = gathered[:3]
        # media-only clips (no caption): the text terms run over the rows with text only, gathered
        # separately so that such rows are neither anchors nor negatives there (a collective call:
        # every rank passes has_text or none does)
        text_rows, where_text, tva_all = valid, where, (t_all, v_all, a_all)
        if has_text is not None:
            _check_valid(has_text, audio.shape[0])
            text_rows = has_text.to(audio.device) & (valid.to(audio.device) if valid is not None else True)
            tva_all, where_text = _gather_batch([t, v, a], text_rows)
            tva_all = tuple(tva_all)

        def nce(x: Tensor, y: Tensor, x_all: Tensor, y_all: Tensor, at: _GatheredBatch = where) -> Tensor:
            return _local_rows_nce(x, y, x_all, y_all, at, scale)

        parts: dict[str, Tensor] = {}
        ta = nce(t, a, tva_all[0], tva_all[2], where_text)
        if self.video_audio:
            va = nce(v, a, v_all, a_all)
            total_loss = ta + (2.0 * va if self.ref_extras else va)
        else:  # monitored only (Table 5 rows 1-2 train text-audio alone)
            with torch.no_grad():
                va = nce(v, a, v_all, a_all)
            total_loss = ta
        parts["ta"], parts["va"] = ta, va
        if self.text_video:
            parts["tv"] = nce(t, v, tva_all[0], tva_all[1], where_text)
            total_loss = total_loss + parts["tv"]
        else:
            with torch.no_grad():  # monitored only (the text/vision alignment CLIP already has)
                parts["tv"] = nce(t, v, tva_all[0], tva_all[1], where_text)

        if m is not None:
            aa = _intra_local_rows(a, m, a_all, gathered[3], where, scale)
            total_loss = total_loss + aa
            parts["aa"] = aa
            if self.ref_extras:
                tt = self_similarity_nce(t, scale, text_rows)
                vv = self_similarity_nce(v, scale, valid)
                total_loss = total_loss + tt + vv
                parts["tt"], parts["vv"] = tt, vv

        parts = {k: p.detach() for k, p in parts.items()}
        parts["logit_scale"] = scale.detach()
        return total_loss, parts


# ----------------------------------------------------------------------------------------------
# retrieval fine-tuning
# ----------------------------------------------------------------------------------------------
def _gather_sides(sides: list[dict[str, Tensor]]) -> tuple[list[dict[str, Tensor]], int, int, int]:
    """Gather every tensor of some feature dicts over ranks in one go (bool masks travel as uint8)."""
    keys = [(i, k) for i, side in enumerate(sides) for k in side]
    tensors = [sides[i][k].to(torch.uint8) if sides[i][k].dtype == torch.bool else sides[i][k] for i, k in keys]
    gathered, offset, total, world = _gather(*tensors)
    out: list[dict[str, Tensor]] = [{} for _ in sides]
    for (i, k), value in zip(keys, gathered):
        out[i][k] = value.bool() if sides[i][k].dtype == torch.bool else value
    return out, offset, total, world


def score_dtype(side: dict[str, Tensor]) -> torch.dtype:
    """The dtype scores of a feature dict come out in (fp32 at least)."""
    floating = [v.dtype for v in side.values() if v.is_floating_point()]
    return torch.promote_types(floating[0], torch.float32) if floating else torch.float32


class RetrievalLoss(nn.Module):
    """Text <-> video InfoNCE over the gathered batch, for any fusion head (G2G, G2L, L2L).

    Every rank scores its local texts against all gathered videos (``S_tv``) and all gathered
    texts against its local videos (``S_vt``); ``direction="symmetric"`` (default) averages the two
    cross-entropies, ``"t2v"`` keeps the first (what REF trains). Rows of the same video (two
    captions of one clip in one batch, when an epoch visits every caption) are not negatives of
    each other, and invalid rows (unreadable media) are neither anchors nor candidates. Scaled
    like the pre-training losses, so N ranks x B equal one process with N·B.

    The head's parameters (L2L: the fusion transformer and ``similarity_dense``) are trained
    through this module, outside DDP; the training loop all-reduces their gradients.
    """

    def __init__(self, head: nn.Module, direction: str = "symmetric", learnable_scale: bool = False,
                 init_scale: float | None = None, train_head: bool = False) -> None:
        super().__init__()
        if direction not in ("symmetric", "t2v"):
            raise ValueError(f"direction must be 'symmetric' or 't2v', got {direction!r}")
        # train_head (L2L): the head's parameters are this module's (trained here, outside DDP);
        # otherwise it only lends its similarity function (G2G has no parameters, G2L's run in DDP)
        self.head = head if train_head else None
        self._similarity = head.similarity
        self.direction = direction
        self.logit_scale = LogitScale(init_scale, learnable=learnable_scale)

    def forward(self, text: dict[str, Tensor], video: dict[str, Tensor], valid: Tensor,
                video_index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        b = valid.shape[0]
        _check_valid(valid, b)
        scale = self.logit_scale()
        (text_all, video_all, meta_all), offset, total, world = _gather_sides(
            [text, video, {"valid": valid.to(torch.uint8), "video_index": video_index}]
        )
        valid_all = meta_all["valid"].bool()
        index_all = meta_all["video_index"]
        targets = torch.arange(b, device=valid.device) + offset
        rows = valid.nonzero().squeeze(1)
        # candidates to drop: invalid columns, and other rows of the anchor's own video
        same_video = video_index[:, None] == index_all[None, :]  # [B, N]
        same_video[torch.arange(b, device=valid.device), targets] = False
        excluded = (same_video | ~valid_all[None, :])[rows]
        norm = world / valid_all.sum().clamp(min=1).to(score_dtype(text))

        local = lambda side: {k: v[offset:offset + b][rows] for k, v in side.items()}  # noqa: E731
        s_tv = _at_least_fp32(self._similarity(local(text_all), video_all, scale))  # [R, N]
        ce_tv = F.cross_entropy(s_tv.masked_fill(excluded, float("-inf")), targets[rows], reduction="sum")
        parts = {"t2v": ce_tv.detach() * norm}
        if self.direction == "t2v":
            total_loss = ce_tv * norm
        else:
            s_vt = _at_least_fp32(self._similarity(text_all, local(video_all), scale)).t()  # [R, N]
            ce_vt = F.cross_entropy(s_vt.masked_fill(excluded, float("-inf")), targets[rows], reduction="sum")
            parts["v2t"] = ce_vt.detach() * norm
            total_loss = 0.5 * (ce_tv + ce_vt) * norm
        parts["logit_scale"] = scale.detach()
        return total_loss, parts
