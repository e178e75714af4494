"""Trees in the formats other runtimes load, in and out, and what each runtime takes today.

Tree formats (:data:`FORMATS`, export and import):

- ``medusa``: FasterDecoding/Medusa ``medusa_choices``, a Python literal list of
  lists. On import tuples, ``name = [...]`` and a whole ``medusa_choices.py`` with
  several named lists are accepted (pick one with ``name``).
- ``eagle``: EAGLE-1's ``tree_choices``, the same literal shape.
- ``trtllm``: TensorRT-LLM ``medusa_choices`` (LLM API / ``MedusaDecodingConfig``),
  a JSON list of lists, checked against the engine's limits (:func:`check_trtllm`).
- ``trtllm-triton``: the same tree in the brace form the TensorRT-LLM Triton
  backend reads from the ``medusa_choices`` parameter of ``config.pbtxt``:
  ``{0}, {0, 0}, {1}`` (one brace group per path, comma separated, no outer brackets).
- ``vllm``: vLLM's old ``speculative_token_tree``, a string of tuples in
  breadth-first order; only correct when every node at a level has the same number
  of children (:func:`check_vllm`). vLLM removed it (see :data:`ENGINE_STATUS`).
- ``vllm-medusa``: what vLLM's Medusa takes today, a top-1 chain: the JSON for
  ``--speculative-config`` with ``num_speculative_tokens`` (optionally a schedule per
  batch size, :func:`vllm_speculative_config`).

:data:`ENGINE_STATUS` records, per target, whether the engine still takes a static
tree and the upstream file each format was checked against.

Every import goes through :meth:`Tree.from_paths`, so a missing parent or a
duplicate is refused rather than silently re-rooted.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from treeopt.core.tree import Tree, format_path
from treeopt.errors import TreeoptError

# A vLLM Medusa chain is one token per head; no Medusa model has more than a few heads,
# so a longer chain is a typo (and n tokens make an n-deep tree of n(n+1)/2 ranks).
MAX_CHAIN = 64
FORMATS = ("medusa", "trtllm", "trtllm-triton", "vllm", "vllm-medusa", "eagle")
# Formats that can hold any tree (vllm-medusa holds only top-1 chains).
TREE_FORMATS = ("medusa", "trtllm", "trtllm-triton", "vllm", "eagle")

# TensorRT-LLM limits: max_draft_len defaults to 63 paths; each level's candidates
# come from a top-k of at most 16 (ranks 0..15); the tree is at most 16 deep.
TRTLLM_DEFAULT_MAX_DRAFT_LEN = 63
TRTLLM_MAX_TOP_K = 16
TRTLLM_MAX_DEPTH = 16


@dataclass(frozen=True)
class EngineStatus:
    """What one export target's engine takes today, and where that was read.

    Attributes:
        takes_static_tree: whether the engine's current release reads this tree.
        summary: one line for tables: which versions take which output.
        warning: one line for ``export`` when the current engine ignores or rejects
            the output (``None`` when it takes it).
        checked_against: upstream files (repo/path@commit or PR) the format was checked
            against.
    """

    takes_static_tree: bool
    summary: str
    warning: str | None
    checked_against: tuple[str, ...]


ENGINE_STATUS: dict[str, EngineStatus] = {
    "medusa": EngineStatus(
        True, "FasterDecoding/Medusa medusa_choices (all versions)", None,
        ("FasterDecoding/Medusa medusa/model/medusa_choices.py@e2a5d20",),
    ),
    "eagle": EngineStatus(
        False, "EAGLE-1 tree_choices; EAGLE-2/3 (EaModel) draft a dynamic tree",
        "EAGLE's current EaModel (EAGLE-2/3) builds a dynamic tree from total_token, depth "
        "and top_k; tree_choices is read only by EAGLE-1 code (eagle/evaluation scripts)",
        ("SafeAILab/EAGLE eagle/model/ea_model.py@cb7e084",
         "SafeAILab/EAGLE eagle/model/choices.py@cb7e084"),
    ),
    "trtllm": EngineStatus(
        True, "TensorRT-LLM medusa_choices, TensorRT-engine backend only (LLM API "
        "MedusaDecodingConfig refuses the pytorch and _autodeploy backends); eagle_choices "
        "removed (PR #18210)", None,
        ("NVIDIA/TensorRT-LLM tensorrt_llm/llmapi/llm_args.py@fcd3f31 "
         "(MedusaDecodingConfig.supports_backend)",
         "NVIDIA/TensorRT-LLM PR #18210 'BREAKING: Remove eagle_choices' (merged, 2026-09)"),
    ),
    "trtllm-triton": EngineStatus(
        True, "TensorRT-LLM Triton backend (tensorrt_llm model, TensorRT engine) "
        "config.pbtxt parameter medusa_choices", None,
        ("NVIDIA/TensorRT-LLM triton_backend/inflight_batcher_llm/src/utils.cc@c8c6df0 "
         "(csvStrToVecVecInt)",
         "NVIDIA/TensorRT-LLM triton_backend/inflight_batcher_llm/src/model_state.cc@5cdd692",
         "NVIDIA/TensorRT-LLM triton_backend/inflight_batcher_llm/src/"
         "model_instance_state.cc@c8c6df0"),
    ),
    "vllm": EngineStatus(
        False, "vLLM speculative_token_tree: only versions before PR #42121 (May 2026), "
        "and read by the EAGLE proposer only, never by Medusa",
        "vLLM removed speculative_token_tree and its tree attention (PR #42121, May 2026); "
        "this string is for older versions' EAGLE proposer only. vLLM's Medusa drafts a "
        "top-1 chain: export --to vllm-medusa, or tune --engine vllm-medusa for a chain "
        "length per batch size",
        ("vllm-project/vllm PR #42121 '[Attention][Cleanup] Remove tree attention' "
         "(merged 2026-05)",
         "vllm-project/vllm vllm/config/speculative.py@002e77c (no speculative_token_tree)"),
    ),
    "vllm-medusa": EngineStatus(
        True, "vLLM Medusa: top-1 chain of num_speculative_tokens (<= heads); the "
        "per-batch num_speculative_tokens_per_batch_size is validated for any method but "
        "MedusaProposer asserts a constant K", None,
        ("vllm-project/vllm vllm/v1/spec_decode/medusa.py@055e47c (argmax of each head; "
         "propose asserts num_speculative_tokens == configured)",
         "vllm-project/vllm vllm/v1/worker/gpu_model_runner.py@000fc94 (passes the scheduled "
         "K, num_spec_tokens_to_schedule, to MedusaProposer.propose)",
         "vllm-project/vllm vllm/config/speculative.py@002e77c "
         "(num_speculative_tokens_per_batch_size)",
         "vllm-project/vllm vllm/v1/spec_decode/dynamic/utils.py@14b450c "
         "(validate_and_normalize_dynamic_sd_schedule)",
         "vllm-project/vllm vllm/transformers_utils/configs/medusa.py@0531c22 "
         "(num_lookahead_tokens sets num_heads)"),
    ),
}


# vLLM's runner passes the scheduled K to MedusaProposer.propose, which asserts it equals
# num_speculative_tokens: a schedule with a smaller K at some batch sizes fails for Medusa.
VLLM_MEDUSA_SCHEDULE_NOTE = (
    "vLLM's Medusa proposer asserts every step drafts num_speculative_tokens "
    "(vllm/v1/spec_decode/medusa.py@055e47c), so it cannot follow a varying schedule yet: "
    "use one num_speculative_tokens per deployment"
)


def static_tree_warning(target: str) -> str | None:
    """One line saying the current release of ``target`` no longer takes this output, or None."""
    status = ENGINE_STATUS.get(target)
    return None if status is None else status.warning


def check_trtllm(tree: Tree, max_draft_len: int = TRTLLM_DEFAULT_MAX_DRAFT_LEN) -> None:
    """Raise TreeoptError if TensorRT-LLM would reject or mis-read ``tree``.

    TRT-LLM maps a node whose parent is missing onto the root without a word;
    :class:`Tree` already guarantees every prefix is present.
    """
    if len(tree) > max_draft_len:
        raise TreeoptError(
            f"TensorRT-LLM takes at most max_draft_len={max_draft_len} nodes; this tree has "
            f"{len(tree)} (build with --budget {max_draft_len + 1} or raise --max-draft-len)"
        )
    if tree.depth > TRTLLM_MAX_DEPTH:
        raise TreeoptError(
            f"TensorRT-LLM trees are at most {TRTLLM_MAX_DEPTH} deep; this is {tree.depth}"
        )
    for path in tree.paths:
        if path[-1] >= TRTLLM_MAX_TOP_K:
            raise TreeoptError(
                f"path {format_path(path)}: TensorRT-LLM takes ranks below {TRTLLM_MAX_TOP_K} "
                f"at each level (top-k <= {TRTLLM_MAX_TOP_K})"
            )


def nonuniform_levels(tree: Tree) -> list[tuple[int, dict[int, int]]]:
    """Levels whose nodes do not all have the same number of children.

    Returns ``(depth, {children_count: nodes_with_that_count})`` for each such
    depth (0 = the root's level, which is trivially uniform). Leaves count as
    nodes with 0 children, except on the deepest level.
    """
    children: dict[tuple[int, ...], int] = defaultdict(int)
    for path in tree.paths:
        children[path[:-1]] += 1
    problems = []
    for depth in range(1, tree.depth):
        counts: dict[int, int] = defaultdict(int)
        for path in tree.paths:
            if len(path) == depth:
                counts[children[path]] += 1
        if len(counts) > 1:
            problems.append((depth, dict(sorted(counts.items()))))
    return problems


def check_vllm(tree: Tree) -> None:
    """Raise TreeoptError unless every node at each level has the same number of children.

    vLLM's tree drafting proposes the same number of children under every node of
    a level; a tree that breaks this is verified as a different tree than the one
    exported.
    """
    problems = nonuniform_levels(tree)
    if problems:
        depth, counts = problems[0]
        spread = ", ".join(f"{nodes} with {kids}" for kids, nodes in counts.items())
        raise TreeoptError(
            f"vLLM needs every node at a level to have the same number of children; "
            f"depth {depth} has nodes {spread} children "
            f"(build one with: treeopt build --engine vllm)"
        )


def chain_length(tree: Tree) -> int:
    """Length of ``tree`` as a top-1 chain (``[0], [0, 0], ...``), or TreeoptError.

    vLLM's Medusa proposer drafts each head's argmax: one token per head, no branches.
    """
    expected = tuple((0,) * depth for depth in range(1, len(tree) + 1))
    if tree.paths != expected:
        odd = next(path for path, want in zip(tree.paths, expected, strict=True) if path != want)
        raise TreeoptError(
            f"vLLM's Medusa drafts a top-1 chain ([0], [0, 0], ...); this tree has "
            f"{format_path(odd)} (build one with: treeopt build --engine vllm-medusa)"
        )
    return len(tree)


def vllm_batch_schedule(
    chain_lengths: Sequence[tuple[int, int]], max_batch: int | None = None
) -> list[list[int]]:
    """vLLM's ``num_speculative_tokens_per_batch_size``: ``[[lo, hi, K], ...]`` (inclusive).

    ``chain_lengths`` holds ``(batch size, best chain length K)`` at the measured batch
    sizes. Each measured size's K holds from it up to the next measured one; the first
    range starts at 1 (vLLM requires it; smaller batches get the first measured K), the
    last ends at ``max_batch`` (default: the largest measured; vLLM applies the last K
    to any larger batch). Adjacent ranges with the same K are merged. The result passes
    vLLM's ``validate_and_normalize_dynamic_sd_schedule``: sorted, non-overlapping,
    starting at 1, K >= 0.
    """
    if not chain_lengths:
        raise TreeoptError("no batch sizes to schedule")
    points = sorted(chain_lengths)
    batches = [batch for batch, _ in points]
    if len(set(batches)) != len(batches) or batches[0] < 1:
        raise TreeoptError(f"batch sizes must be distinct and >= 1, not {batches}")
    for batch, length in points:
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise TreeoptError(f"chain length at batch {batch} must be an integer >= 0")
    last = batches[-1] if max_batch is None else max_batch
    if last < batches[-1]:
        raise TreeoptError(f"max batch {last} is below the largest batch size {batches[-1]}")
    schedule: list[list[int]] = []
    for index, (_, length) in enumerate(points):
        low = 1 if index == 0 else batches[index]
        high = batches[index + 1] - 1 if index + 1 < len(points) else last
        if schedule and schedule[-1][2] == length:
            schedule[-1][1] = high
        else:
            schedule.append([low, high, length])
    return schedule


def vllm_speculative_config(
    chain_lengths: Sequence[tuple[int, int]] | int, model: str | None = None,
    max_batch: int | None = None,
) -> dict[str, Any]:
    """vLLM's ``--speculative-config`` for Medusa heads: a chain length, or one per batch size.

    ``chain_lengths`` is one K or ``(batch, K)`` pairs (see :func:`vllm_batch_schedule`).
    ``num_speculative_tokens`` is the largest K (vLLM caps a scheduled K at it, and its
    Medusa uses that many heads); at least 1, as vLLM requires. A schedule that varies
    passes vLLM's config validation, but see :data:`VLLM_MEDUSA_SCHEDULE_NOTE`.
    """
    config: dict[str, Any] = {"method": "medusa"}
    if model is not None:
        config["model"] = model
    if isinstance(chain_lengths, int):
        if chain_lengths < 1:
            raise TreeoptError("vLLM needs num_speculative_tokens >= 1")
        config["num_speculative_tokens"] = chain_lengths
        return config
    schedule = vllm_batch_schedule(chain_lengths, max_batch)
    config["num_speculative_tokens"] = max(1, *(k for _, _, k in schedule))
    if len(schedule) > 1:
        config["num_speculative_tokens_per_batch_size"] = schedule
    return config


def export_text(
    tree: Tree,
    target: str,
    max_draft_len: int = TRTLLM_DEFAULT_MAX_DRAFT_LEN,
    allow_nonuniform: bool = False,
) -> str:
    """``tree`` in ``target``'s format (one of :data:`FORMATS`), as text.

    ``allow_nonuniform`` exports a tree vLLM cannot draft faithfully anyway (the
    caller is expected to warn); by default such a tree is refused. Whether the
    current engine still reads the output: :func:`static_tree_warning`.
    """
    if target in ("medusa", "eagle"):
        return "[" + ", ".join(format_path(path) for path in tree.paths) + "]"
    if target == "trtllm":
        check_trtllm(tree, max_draft_len)
        return json.dumps(tree.as_lists())
    if target == "trtllm-triton":
        check_trtllm(tree, max_draft_len)
        return ", ".join("{" + ", ".join(map(str, path)) + "}" for path in tree.paths)
    if target == "vllm":
        if not allow_nonuniform:
            check_vllm(tree)
        return "[" + ", ".join(_tuple_literal(path) for path in tree.paths) + "]"
    if target == "vllm-medusa":
        return json.dumps(vllm_speculative_config(chain_length(tree)))
    raise TreeoptError(f"unknown export target {target!r} (choose from {', '.join(FORMATS)})")


def _tuple_literal(path: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(rank) for rank in path) + ("," if len(path) == 1 else "") + ")"


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise TreeoptError(
            "not a list of paths: expected a literal like [[0], [0, 0], [1]]"
        ) from None


def _named_values(module: ast.Module) -> dict[str, ast.AST]:
    """Top-level ``name = value`` (and ``name: type = value``) in source order."""
    named: dict[str, ast.AST] = {}
    for statement in module.body:
        if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            named[statement.targets[0].id] = statement.value
        elif (isinstance(statement, ast.AnnAssign) and statement.value is not None
                and isinstance(statement.target, ast.Name)):
            named[statement.target.id] = statement.value
    return named


def _literal_value(text: str, name: str | None) -> Any:
    """The one literal ``text`` holds: a bare literal, or the list called ``name``."""
    try:
        module = ast.parse(text.strip(), mode="exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise TreeoptError(
            "not a list of paths: expected a literal like [[0], [0, 0], [1]]"
        ) from None
    named = _named_values(module)
    if named:
        if name is not None:
            if name not in named:
                raise TreeoptError(f"no list named {name!r} (has: {', '.join(named)})")
            return _literal(named[name])
        if len(named) > 1:
            raise TreeoptError(
                f"holds {len(named)} lists: {', '.join(named)}; choose one with --name"
            )
        return _literal(next(iter(named.values())))
    if name is not None:
        raise TreeoptError(f"--name {name}: the text holds one unnamed list")
    if len(module.body) != 1 or not isinstance(module.body[0], ast.Expr):
        raise TreeoptError("not a list of paths: expected a literal like [[0], [0, 0], [1]]")
    return _literal(module.body[0].value)


def parse_paths(text: str, name: str | None = None) -> list[list[int]]:
    """Parse a list of paths written as a Python/JSON literal (lists or tuples).

    Accepts ``name = [...]``, a vLLM-style quoted string of tuples, and a file of
    several named lists (Medusa's ``medusa_choices.py``), from which ``name`` picks
    one; without ``name`` such a file is a one-line error listing its names.
    """
    value = _literal_value(text, name)
    if isinstance(value, dict) and "speculative_token_tree" in value:  # a vLLM config
        value = value["speculative_token_tree"]
    if isinstance(value, str):  # vLLM's config holds the tree as a string (one level only)
        value = _literal_value(value, None)
    if not isinstance(value, (list, tuple)):
        raise TreeoptError(f"not a list of paths: got a {type(value).__name__}")
    paths = []
    for raw in value:
        if not isinstance(raw, (list, tuple)):
            raise TreeoptError(f"path {raw!r:.80} is not a list or tuple of ranks")
        paths.append(list(raw))
    return paths


_BRACE_GROUP = re.compile(r"\{([^{}]*)\}")
_BRACE_LIST = re.compile(r"\s*\{[^{}]*\}(\s*,\s*\{[^{}]*\})*\s*,?\s*")
_PBTXT_VALUE = re.compile(r'key\s*:\s*"medusa_choices".*?string_value\s*:\s*"([^"]*)"', re.DOTALL)


def parse_brace_paths(text: str) -> list[list[int]]:
    """Parse the Triton backend's ``{0}, {0, 0}, {1}`` (or a config.pbtxt holding it)."""
    found = _PBTXT_VALUE.search(text)
    body = found.group(1) if found else text.strip()
    if not _BRACE_LIST.fullmatch(body):
        raise TreeoptError(
            "not a Triton medusa_choices value: expected brace groups like {0}, {0, 0}, {1}"
        )
    paths = []
    for group in _BRACE_GROUP.findall(body):
        try:
            paths.append([int(rank) for rank in group.split(",")])
        except ValueError:
            raise TreeoptError(f"{{{group}}} is not a comma-separated list of ranks") from None
    return paths


def _parse_vllm_medusa(text: str) -> list[list[int]]:
    from treeopt.files.jsondoc import parse_json

    config = parse_json(text, "vLLM speculative config")
    length = config.get("num_speculative_tokens") if isinstance(config, dict) else None
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise TreeoptError("not a vLLM speculative config: needs num_speculative_tokens >= 1")
    if length > MAX_CHAIN:
        raise TreeoptError(f"num_speculative_tokens {length} is more than any Medusa model's "
                           f"heads (at most {MAX_CHAIN} here)")
    return [[0] * depth for depth in range(1, length + 1)]


def import_text(
    text: str, source: str, num_heads: int | None = None, name: str | None = None
) -> Tree:
    """Read a tree written in ``source``'s format (one of :data:`FORMATS`).

    ``name`` picks one list from a file of several named lists (Medusa's
    ``medusa_choices.py``).
    """
    if source not in FORMATS:
        raise TreeoptError(f"unknown import format {source!r} (choose from {', '.join(FORMATS)})")
    if name is not None and source in ("trtllm-triton", "vllm-medusa"):
        raise TreeoptError(f"--name picks a list from a Python file; {source} holds one tree")
    if source == "trtllm-triton":
        paths = parse_brace_paths(text)
    elif source == "vllm-medusa":
        paths = _parse_vllm_medusa(text)
    else:
        paths = parse_paths(text, name)
    tree = Tree.from_paths(paths, num_heads=num_heads)
    if source in ("trtllm", "trtllm-triton"):
        check_trtllm(tree, max_draft_len=max(len(tree), TRTLLM_DEFAULT_MAX_DRAFT_LEN))
    return tree


# ------------------------------------------------------------------ knob targets
# The engines no longer take a static tree (see ENGINE_STATUS): each builds its tree from a
# few knobs. A knob setting is the engine-style dynamic tree dynamic:STEPS,TOPK,TOKENS
# (treeopt.core.expansion.BeamSetting; a chain of K is (K, 1, K + 1)), or None: speculation off.
SGLANG_SOURCES = (
    "sgl-project/sglang python/sglang/srt/server_args.py@001067f (speculative_num_steps, "
    "speculative_eagle_topk, speculative_num_draft_tokens; speculative_algorithm EAGLE, "
    "EAGLE3, STANDALONE)",
    "sgl-project/sglang python/sglang/srt/arg_groups/speculative_hook.py@004c82e "
    "(_auto_choose_speculative_params: STANDALONE (3, 1, 4), Llama (5, 4, 8); topk == 1 "
    "forces num_draft_tokens = num_steps + 1; speculative_adaptive picks num_steps per "
    "batch only with topk 1)",
)
VLLM_SPEC_SOURCES = (
    "vllm-project/vllm vllm/config/speculative.py@002e77c (method draft_model / eagle / "
    "eagle3, num_speculative_tokens, num_speculative_tokens_per_batch_size)",
    "vllm-project/vllm vllm/v1/spec_decode/dynamic/utils.py@14b450c "
    "(validate_and_normalize_dynamic_sd_schedule: 3-item (lo, hi, K) ranges, sorted, "
    "non-overlapping, the first starting at 1, K >= 0; build_dynamic_sd_schedule_lookup "
    "caps K at num_speculative_tokens and gives larger batches the last K)",
)
TRTLLM_PYTORCH_SOURCES = (
    "NVIDIA/TensorRT-LLM tensorrt_llm/llmapi/llm_args.py@fcd3f31 (DraftTargetDecodingConfig "
    "decoding_type Draft_Target: max_draft_len > 0, linear tree only; EagleDecodingConfig "
    "use_dynamic_tree: max_draft_len <= max_total_draft_tokens <= dynamic_tree_max_topK * "
    "max_draft_len; draft_len_schedule {batch: draft_len} must hold {1: max_draft_len})",
)
DRAFTERS = ("medusa", "draft_model", "eagle")


@dataclass(frozen=True)
class EngineTarget:
    """One export or tune target: what its engine takes, its rules, its file and sources.

    Attributes:
        name: the target's name (``--to`` / ``--engine``).
        takes: ``static tree``, ``chain`` or ``knobs`` (the engine builds the tree itself).
        drafters: the drafters it runs (``medusa``, ``draft_model``, ``eagle``).
        rules: its limits, one sentence each.
        suffix: the written file's suffix.
        checked_against: upstream files (repo path@commit) the rules were read from.
        builder: the tree builder's limits for it (``build --engine``), if any.
        schema: for knob targets, the JSON Schema its config validates against.
    """

    name: str
    takes: str
    drafters: tuple[str, ...]
    rules: tuple[str, ...]
    suffix: str
    checked_against: tuple[str, ...]
    builder: str | None = None
    schema: str | None = None

    @property
    def status(self) -> EngineStatus | None:
        return ENGINE_STATUS.get(self.name)


def _static(name: str, suffix: str, rules: tuple[str, ...], builder: str | None = None,
            takes: str = "static tree", drafters: tuple[str, ...] = ("medusa",)) -> EngineTarget:
    return EngineTarget(name, takes, drafters, rules, suffix,
                        ENGINE_STATUS[name].checked_against, builder)


ENGINE_TARGETS: dict[str, EngineTarget] = {
    "medusa": _static("medusa", ".py", ("any tree",)),
    "eagle": _static("eagle", ".py", ("any tree (EAGLE-1 tree_choices)",),
                     drafters=("eagle",)),
    "trtllm": _static("trtllm", ".json", (
        f"at most max_draft_len ({TRTLLM_DEFAULT_MAX_DRAFT_LEN}) nodes",
        f"ranks below {TRTLLM_MAX_TOP_K}", f"depth at most {TRTLLM_MAX_DEPTH}"), "trtllm"),
    "trtllm-triton": _static("trtllm-triton", ".txt", (
        "as trtllm, written as the Triton backend's brace groups",), "trtllm"),
    "vllm": _static("vllm", ".txt", ("every node of a level has as many children",),
                    "vllm", drafters=("eagle",)),
    "vllm-medusa": _static("vllm-medusa", ".json", (
        "a top-1 chain of at most the heads' count", "one constant K (the Medusa "
        "proposer asserts it)"), "vllm-medusa", takes="chain"),
    "sglang": EngineTarget(
        "sglang", "knobs", ("draft_model", "eagle"), (
            "--speculative-num-steps S >= 1, --speculative-eagle-topk K >= 1, "
            "--speculative-num-draft-tokens N (root included) in 2..1 + K + (S-1) K^2",
            "K == 1 forces N = S + 1", "one setting per server (no batch schedule; "
            "speculative_adaptive tunes S alone, only with K == 1)",
            "Medusa heads: not supported"), ".yaml", SGLANG_SOURCES,
        schema="sglang-speculative.schema.json"),
    "vllm-spec": EngineTarget(
        "vllm-spec", "chain", ("draft_model", "eagle"), (
            "a chain of K = num_speculative_tokens >= 1 drafts (no tree: tree attention "
            "was removed, PR #42121)", "num_speculative_tokens_per_batch_size: "
            "[[lo, hi, K], ...] from batch 1, sorted, non-overlapping, K >= 0 (0: off), "
            "K capped at num_speculative_tokens", "Medusa heads: use vllm-medusa"),
        ".json", VLLM_SPEC_SOURCES, schema="vllm-speculative-config.schema.json"),
    "trtllm-pytorch": EngineTarget(
        "trtllm-pytorch", "knobs", ("draft_model", "eagle"), (
            "draft model (Draft_Target): a chain of max_draft_len >= 1",
            "EAGLE-3 dynamic tree: max_draft_len <= max_total_draft_tokens <= "
            "dynamic_tree_max_topK * max_draft_len",
            "draft_len_schedule {batch: draft_len} holds {1: max_draft_len}; 0 turns "
            "speculation off", "Medusa heads: TensorRT backend only (use trtllm)"),
        ".yaml", TRTLLM_PYTORCH_SOURCES, schema="trtllm-pytorch-speculative.schema.json"),
}
KNOB_TARGETS = tuple(name for name, target in ENGINE_TARGETS.items()
                     if target.schema is not None)


def engine_target(name: str) -> EngineTarget:
    """The record of ``name``; a one-line TreeoptError listing the targets otherwise."""
    if name not in ENGINE_TARGETS:
        raise TreeoptError(f"unknown engine target {name!r} (choose from "
                           f"{', '.join(ENGINE_TARGETS)})")
    return ENGINE_TARGETS[name]


def check_pairing(name: str, drafter: str) -> EngineTarget:
    """The target's record if its engine runs ``drafter``; else one line saying what it takes."""
    target = engine_target(name)
    if drafter not in target.drafters:
        takes = ", ".join(d.replace("_", " ") for d in target.drafters)
        raise TreeoptError(f"{name} does not run {drafter.replace('_', ' ')} drafters: it "
                           f"takes {target.takes} for {takes} ({target.rules[-1]})")
    return target


def sglang_server_args(setting: Any, drafter: str, draft_model: str | None) -> dict[str, Any]:
    """SGLang ServerArgs fields for one ``dynamic:S,K,N`` (its ``--config`` YAML keys)."""
    algorithm = "STANDALONE" if drafter == "draft_model" else "EAGLE3"
    args: dict[str, Any] = {"speculative_algorithm": algorithm}
    if draft_model is not None:
        args["speculative_draft_model_path"] = draft_model
    args.update(speculative_num_steps=setting.steps, speculative_eagle_topk=setting.topk,
                speculative_num_draft_tokens=setting.num_tokens)
    return args


def sglang_flags(args: dict[str, Any]) -> str:
    """The launch flags of :func:`sglang_server_args`' fields."""
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in args.items())


def vllm_spec_config(schedule: Sequence[tuple[int, int]], drafter: str,
                     draft_model: str | None, max_batch: int | None = None) -> dict[str, Any]:
    """vLLM ``--speculative-config`` with a chain length per batch size (``(batch, K)``)."""
    method = "draft_model" if drafter == "draft_model" else "eagle3"
    ranges = vllm_batch_schedule(schedule, max_batch)
    config: dict[str, Any] = {"method": method}
    if draft_model is not None:
        config["model"] = draft_model
    config["num_speculative_tokens"] = max(1, *(k for _, _, k in ranges))
    if len(ranges) > 1 or ranges[0][2] == 0:
        config["num_speculative_tokens_per_batch_size"] = ranges
    return config


def trtllm_pytorch_config(schedule: Sequence[tuple[int, Any]], drafter: str,
                          draft_model: str | None) -> dict[str, Any]:
    """TensorRT-LLM PyTorch-backend ``speculative_config`` (the extra LLM API options YAML).

    ``schedule``: ``(batch, setting or None)`` per batch bucket. A draft model drafts a
    chain: ``max_draft_len`` is batch 1's length (TensorRT-LLM requires ``{1:
    max_draft_len}``), later lengths are capped at it, ``None`` is 0 (off). EAGLE-3 takes
    batch 1's dynamic tree (no per-batch tree schedule).
    """
    points = sorted(schedule, key=lambda item: item[0])
    first = points[0][1]
    spec: dict[str, Any] = {}
    if drafter == "draft_model":
        top = first.steps if first is not None else 1
        spec = {"decoding_type": "Draft_Target", "max_draft_len": top}
        lengths = {batch: 0 if s is None else min(top, s.steps) for batch, s in points}
        lengths[1] = top
        if len(set(lengths.values())) > 1:
            spec["draft_len_schedule"] = dict(sorted(lengths.items()))
    else:
        setting = first or _chain(1)
        spec = {"decoding_type": "Eagle3", "max_draft_len": setting.steps,
                "max_total_draft_tokens": setting.num_tokens - 1,
                "use_dynamic_tree": setting.topk > 1}
        if setting.topk > 1:
            spec["dynamic_tree_max_topK"] = setting.topk
    if draft_model is not None:
        spec["speculative_model"] = draft_model
    return {"speculative_config": spec}


def _chain(length: int) -> Any:
    from treeopt.core.expansion import BeamSetting

    return BeamSetting(length, 1, length + 1)


def check_knob_config(name: str, config: dict[str, Any]) -> None:
    """Raise a one-line TreeoptError unless ``config`` is valid for knob target ``name``:
    its JSON Schema (written from the engine's source) and the cross-field rules."""
    from treeopt.files.jsondoc import check_schema, shipped_schema

    target = engine_target(name)
    if target.schema is None:
        raise TreeoptError(f"{name} takes a tree file, not a knob config")
    # As the engine parses it: JSON/YAML text, whose mapping keys are strings to a schema.
    check_schema(json.loads(json.dumps(config)), shipped_schema(target.schema),
                 f"{name} config")
    if name == "sglang":
        steps, topk = config["speculative_num_steps"], config["speculative_eagle_topk"]
        tokens = config["speculative_num_draft_tokens"]
        top = 1 + topk + (steps - 1) * topk * topk
        if (topk == 1 and tokens != steps + 1) or not 2 <= tokens <= top:
            raise TreeoptError(f"sglang config: speculative_num_draft_tokens {tokens} must be "
                               f"{steps + 1 if topk == 1 else f'in 2..{top}'} for "
                               f"{steps} steps, topk {topk}")
    elif name == "vllm-spec" and "num_speculative_tokens_per_batch_size" in config:
        ranges = config["num_speculative_tokens_per_batch_size"]
        if ranges[0][0] != 1 or any(b[0] <= a[1] for a, b in pairwise(ranges)):
            raise TreeoptError("vllm-spec config: batch ranges must start at 1, sorted and "
                               "non-overlapping")
    elif name == "trtllm-pytorch":
        spec = config["speculative_config"]
        lengths = spec.get("draft_len_schedule")
        if lengths is not None and int(lengths.get(1, lengths.get("1", -1))) != \
                spec["max_draft_len"]:
            raise TreeoptError("trtllm-pytorch config: draft_len_schedule must map batch 1 "
                               "to max_draft_len")
        total = spec.get("max_total_draft_tokens")
        if total is not None and spec.get("use_dynamic_tree") and not (
                spec["max_draft_len"] <= total
                <= spec.get("dynamic_tree_max_topK", 1) * spec["max_draft_len"]):
            raise TreeoptError("trtllm-pytorch config: max_draft_len <= max_total_draft_tokens "
                               "<= dynamic_tree_max_topK * max_draft_len")
