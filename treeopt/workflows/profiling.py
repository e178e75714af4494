"""``treeopt profile`` as one call, and the profiling step autotune's profile stage shares.

:func:`profile_to_file` is the verb: the cheap checks (heads, prompts) before the
model loads, then the model, then :func:`profile_prompts` (Medusa heads) or the
draft model's profile. :func:`profile_prompts` is what ``treeopt autotune``'s
``profile`` stage calls for its calibration and held-out profiles, so both write
the same profile for the same model, heads and prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeopt.errors import ParameterError


@dataclass(frozen=True)
class ProfileRequest:
    """What ``treeopt profile`` measures, on what, and where it goes (field names are the
    verb's option names).

    ``settings`` is a :class:`treeopt.model.profiling.ProfileSettings`; ``provenance``
    adds facts to the profile's provenance.
    """

    model: str
    data: str
    output: Path
    settings: Any
    heads: str | None = None
    max_prompts: int | None = None
    seed: int = 0
    turns: str = "first"
    chat_template: bool = True
    device: str = "cpu"
    dtype: str = "auto"
    device_map: str | None = None
    resume: bool = False
    quiet: bool = False
    draft_model: str | None = None
    depth: int = 0
    expand: tuple[int, int] | None = None  # (k_max, d_max): also record the beam expansion
    provenance: dict[str, Any] = field(default_factory=dict)


def profile_prompts(model: Any, tokenizer: Any, heads: Any, prompt_ids: Sequence[list[int]],
                    output: Path, settings: Any, *, model_id: str, heads_id: str,
                    resume: bool, progress: bool,
                    provenance: dict[str, Any] | None = None) -> Any:
    """Profile loaded Medusa ``heads`` on tokenized prompts; write and return the profile.

    The one profiling step of ``treeopt profile`` and ``treeopt autotune``
    (:func:`treeopt.model.profiling.profile_model`: greedy targets cached beside
    ``output``, resumable).
    """
    from treeopt.model.profiling import profile_model

    return profile_model(model, tokenizer, heads, prompt_ids, output, settings,
                         model_id=model_id, heads_id=heads_id, resume=resume,
                         progress=progress, provenance=provenance)


def profile_to_file(request: ProfileRequest) -> Any:
    """The whole ``treeopt profile``: check, load, encode, profile; the profile written.

    Under ``torchrun``/``accelerate launch`` each rank runs this on its own device
    (``cuda`` -> ``cuda:LOCAL_RANK``); rank 0 returns the merged profile, the others
    None. The provenance records content digests of model, heads and tokenizer."""
    from treeopt.model.calibration import encode_prompts, read_prompts
    from treeopt.model.digests import digests_provenance
    from treeopt.model.distributed import rank_device
    from treeopt.model.loading import load_medusa, require_heads
    from treeopt.model.profiling import check_resumable

    # Cheap checks first: heads and prompts before the model loads.
    if request.draft_model is not None and request.heads is not None:
        raise ParameterError("heads", "cannot be used with a draft model (it is profiled "
                             "instead of Medusa heads)")
    if request.draft_model is None:
        require_heads(request.model, request.heads)
    texts = read_prompts(request.data, max_prompts=request.max_prompts, seed=request.seed,
                         turns=request.turns)
    check_resumable(request.output, request.resume)  # a broken checkpoint: before loading
    facts = {"dataset": str(request.data), "dtype": request.dtype,
             "chat_template": request.chat_template, **request.provenance}
    if request.draft_model is not None:
        return _profile_draft(request, texts, facts)
    loaded = load_medusa(request.model, request.heads, device=rank_device(request.device),
                         dtype=request.dtype, device_map=request.device_map,
                         quiet=request.quiet)
    prompt_ids = encode_prompts(loaded.tokenizer, texts, chat_template=request.chat_template)
    return profile_prompts(loaded.model, loaded.tokenizer, loaded.heads, prompt_ids,
                           request.output, request.settings, model_id=loaded.model_id,
                           heads_id=str(loaded.heads_id), resume=request.resume,
                           progress=not request.quiet,
                           provenance={**facts, **digests_provenance(loaded.model_id,
                                                                     loaded.heads_id)})


def _profile_draft(request: ProfileRequest, texts: list[str], facts: dict[str, Any]) -> Any:
    """A draft model's profile: target and draft loaded, the draft's ranks recorded."""
    from treeopt.model.calibration import encode_prompts
    from treeopt.model.digests import digests_provenance
    from treeopt.model.distributed import rank_device
    from treeopt.model.draft_profiling import profile_draft_model
    from treeopt.model.loading import load_base_model, resolve_model

    device = rank_device(request.device)
    base, tokenizer = load_base_model(request.model, device=device, dtype=request.dtype)
    draft, _ = load_base_model(str(request.draft_model), device=device, dtype=request.dtype)
    prompt_ids = encode_prompts(tokenizer, texts, chat_template=request.chat_template)
    model_id = resolve_model(request.model)[0]
    return profile_draft_model(
        base, tokenizer, draft, prompt_ids, request.output, request.settings,
        model_id=model_id, draft_id=str(request.draft_model),
        depth=request.depth, resume=request.resume, progress=not request.quiet,
        provenance={**facts, **digests_provenance(model_id, str(request.draft_model))},
        expand=request.expand)
